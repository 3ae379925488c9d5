#!/usr/bin/env python3
"""The original v2 client: an interactive prompt; quit/exit leave, bye ends the session.

A thin shim over the Rust core: ``sockdemo.cli.client_script``. Run ``client.v2.py --help``.
"""

import glob
import os
import sys

# This folder holds the sockdemo sources. After `maturin develop` the compiled
# core sits beside them; after `pip install .` it is only in site-packages,
# and then this folder must not shadow the installed package.
_here = os.path.dirname(os.path.abspath(__file__))
if not any(f.endswith((".so", ".pyd")) for f in glob.glob(f"{_here}/sockdemo/_sockdemo.*")):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

try:
    from sockdemo.cli import client_script
except ImportError as exc:
    sys.exit(f"Error: sockdemo is not installed ({exc}); run 'make run' or 'pip install .' first.")

if __name__ == "__main__":
    sys.exit(client_script())
