"""Every dock, opened together from the Plugins menu, fits a 1280×800 laptop screen."""

from __future__ import annotations

import pytest


def _docks() -> list[str]:
    """Every dock widget the manifest contributes (a new dock is checked too)."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest("napari-emdenoise")
    return [widget.display_name for widget in manifest.contributions.widgets or []]


@pytest.fixture
def all_docks(make_napari_viewer, open_dock, qtbot):
    viewer = make_napari_viewer(show=True)
    docks = _docks()
    assert {"Restore", "Noise-model playground", "Train"} <= set(docks)
    widgets = {name: open_dock(viewer, name) for name in docks}
    viewer.window._qt_window.resize(1280, 800)
    qtbot.wait(300)
    return viewer, widgets  # (not the Qt window: napari's leak check would see it held)


def test_the_window_with_every_dock_fits_1280_by_800(all_docks):
    viewer, widgets = all_docks
    window = viewer.window._qt_window  # the test inspects napari's Qt window directly
    hint = window.minimumSizeHint()
    assert hint.height() <= 800 and hint.width() <= 1280, hint
    assert window.height() <= 800 and window.width() <= 1280
    for name, widget in widgets.items():
        assert widget.native.isVisible(), name
        assert widget.native.height() >= 60, (name, widget.native.height())


def test_loss_plots_are_readable_and_keep_their_legends(all_docks, qtbot):
    from napari_emdenoise._widgets.loss_plot import MIN_PLOT_HEIGHT

    viewer, widgets = all_docks
    plot = widgets["Train"].plot
    assert plot.isVisible()
    terms = ("l1", "l2", "mlwt", "fourier", "mean", "std", "adversarial", "discriminator", "total")
    for step in range(1, 6):
        plot.add_step(step, {name: 1.0 / (step + i) for i, name in enumerate(terms)})
        plot.add_validation(step, 20.0 + step, 12.0)
    plot.redraw()
    qtbot.wait(200)
    assert plot.graphics.height() >= MIN_PLOT_HEIGHT
    for item in (plot.loss_plot, plot.val_plot):
        view = item.getViewBox().sceneBoundingRect()
        legend = item.legend.sceneBoundingRect()
        assert view.height() >= 100, view
        # the legend lies inside the plot area: nothing is cut off
        assert legend.height() <= view.height() and legend.width() <= view.width()
