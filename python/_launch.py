"""Runs one of sockdemo's programs for the four scripts beside this file.

This folder holds the sockdemo sources. After ``maturin develop`` the compiled
core sits beside them and they are what runs; after ``pip install`` the core
is only in site-packages, and then this folder must not shadow the installed
package. Each script says which program it is and calls :func:`run`.
"""

from __future__ import annotations

import glob
import os
import sys


def run(program: str) -> None:
    """Exits with what ``sockdemo.cli.<program>()`` returns."""
    here = os.path.dirname(os.path.abspath(__file__))
    built_here = any(
        f.endswith((".so", ".pyd"))
        for f in glob.glob(os.path.join(here, "sockdemo", "_sockdemo.*"))
    )
    if not built_here:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from sockdemo import cli
    except ImportError as exc:
        sys.exit(
            f"Error: sockdemo is not installed ({exc}); run 'make run' or 'pip install .' first."
        )
    sys.exit(getattr(cli, program)())
