"""Which main scripts spawned data-loader processes would re-run (no Qt needed)."""

from __future__ import annotations

import types

from napari_emdenoise._widgets._spawn import runs_code_on_import, unguarded_main_script


def test_napari_example_without_guard_runs_code():
    src = "import napari\nviewer = napari.Viewer()\nnapari.run()\n"
    assert runs_code_on_import(src)


def test_guarded_scripts_and_plain_definitions_are_safe():
    guarded = (
        '"""doc"""\nimport napari\nSIZE = 3\n\ndef main():\n    napari.run()\n\n'
        'if __name__ == "__main__":\n    main()\n'
    )
    assert not runs_code_on_import(guarded)
    assert not runs_code_on_import("if '__main__' == __name__:\n    print(1)\n")
    assert runs_code_on_import("x = compute()\n")
    assert runs_code_on_import("def broken(:\n")  # unparsable: unsafe


def _main(**attrs) -> types.ModuleType:
    module = types.ModuleType("__main__")
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_unguarded_main_script_follows_multiprocessing(tmp_path):
    bad = tmp_path / "show.py"
    bad.write_text("import napari\nnapari.Viewer()\nnapari.run()\n")
    good = tmp_path / "good.py"
    good.write_text("import napari\nif __name__ == '__main__':\n    napari.run()\n")
    assert unguarded_main_script(_main(__file__=str(bad), __spec__=None)) == str(bad)
    assert unguarded_main_script(_main(__file__=str(good), __spec__=None)) is None
    # interactive sessions and `python -m package` (a package's __main__) re-run nothing
    assert unguarded_main_script(_main(__spec__=None)) is None
    spec = types.SimpleNamespace(name="napari.__main__", origin=str(bad))
    assert unguarded_main_script(_main(__file__=str(bad), __spec__=spec)) is None
    spec = types.SimpleNamespace(name="mytool", origin=str(bad))
    assert unguarded_main_script(_main(__file__=str(bad), __spec__=spec)) == str(bad)
