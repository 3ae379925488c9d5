#!/usr/bin/env python3
"""The original v2 server: serves clients one at a time (--max-clients N for more) until Ctrl+C.

A thin shim over the Rust core: ``sockdemo.cli.server_script``. Run ``server.v2.py --help``.
"""

if __name__ == "__main__":
    from _launch import run

    run("server_script")
