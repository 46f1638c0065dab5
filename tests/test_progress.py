"""Progress reporting off a terminal: periodic log lines, one final line, never a duplicate."""

from __future__ import annotations

import logging

from pathstrat.progress import Progress, track


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pathstrat.progress"]


def test_final_line_is_not_repeated(caplog):
    caplog.set_level(logging.INFO, logger="pathstrat.progress")
    with Progress(2, "tile", log_every=0, enable_bar=False) as p:
        p.update(1)
        p.update(1)
    assert [m.split(",")[0] for m in _lines(caplog)] == ["tile: 1/2 slide", "tile: 2/2 slide"]


def test_rare_logging_still_reports_the_end_with_rates(caplog):
    caplog.set_level(logging.INFO, logger="pathstrat.progress")
    with Progress(3, "embed", sub_unit="tiles", log_every=1e9, enable_bar=False) as p:
        for _ in range(3):
            p.update(1, units=100)
    lines = _lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("embed: 3/3 slide, 300 tiles (")


def test_track_yields_everything_in_order(caplog):
    caplog.set_level(logging.INFO, logger="pathstrat.progress")
    assert list(track(range(5), "items")) == [0, 1, 2, 3, 4]
    assert _lines(caplog)[-1].startswith("items: 5/5 item")


def test_bar_only_is_silent_off_a_terminal(caplog):
    """Inner loops (training epochs) draw a bar on a terminal and log nothing elsewhere: the
    caller's one line per fold is the whole log."""
    caplog.set_level(logging.INFO, logger="pathstrat.progress")
    with Progress(30, "repeat 0, fold 1", unit="epoch", log_every=0.0, bar_only=True,
                  enable_bar=False) as p:
        for _ in range(30):
            p.update(1)
    assert _lines(caplog) == [] and p.n == 30
    with Progress(3, "loud", unit="epoch", log_every=0.0, enable_bar=False) as p:
        p.update(3)
    assert len(_lines(caplog)) == 1  # the same loop without bar_only logs
