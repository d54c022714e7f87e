"""`fastssl bench`: the loader against a baseline written the way users write it, and the decode floor.

`baseline` holds the contestants other than fastssl (torch DataLoader + PIL transforms, PIL decode
only); `harness` runs each in its own process tree, times it after a warm-up and reports images/s,
ratios, peak RSS and CPU use as a table, JSON and a bar chart.
"""
