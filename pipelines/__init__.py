"""View pipelines that compile a recipe into a DALI graph or a Kornia module.

Installed as `fastssl.pipelines`. The backends arrive with the view engine.
"""
