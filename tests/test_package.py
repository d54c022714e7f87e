"""Package wiring: one top-level import, lazy data exports, light decode workers."""

import subprocess
import sys

import fastssl
import fastssl.data


def test_layers_install_under_fastssl():
    import fastssl.kernels
    import fastssl.pipelines

    assert fastssl.kernels.__file__.endswith("kernels/__init__.py")
    assert fastssl.pipelines.__file__.endswith("pipelines/__init__.py")
    assert fastssl.__version__


def test_data_exports_resolve():
    assert sorted(fastssl.data.__all__) == sorted(fastssl.data._EXPORTS)
    for name in fastssl.data.__all__:
        assert getattr(fastssl.data, name).__name__ == name


def test_shard_writer_and_its_workers_do_not_import_torch():
    # `fastssl shards` and its spawned workers start in a blink; torch would add ~1.5 s to each.
    code = (
        "import sys, fastssl.cli, fastssl.commands, fastssl.data.writer; "
        "print('torch' in sys.modules, 'webdataset' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
