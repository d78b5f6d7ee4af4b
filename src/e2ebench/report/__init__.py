"""Reports: the paper's figures (``figures``) and one self-contained HTML file per study (``html``).

Import :func:`build_report` from here; it pulls in matplotlib, so the CLI imports this package only
inside the ``report`` command.
"""

from __future__ import annotations


def build_report(*args, **kwargs):
    """See :func:`e2ebench.report.html.build_report`."""
    from e2ebench.report.html import build_report as _build

    return _build(*args, **kwargs)


__all__ = ["build_report"]
