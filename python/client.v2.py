#!/usr/bin/env python3
"""The original v2 client: an interactive prompt; quit/exit leave, bye ends the session.

A thin shim over the Rust core: ``sockdemo.cli.client_script``. Run ``client.v2.py --help``.
"""

if __name__ == "__main__":
    from _launch import run

    run("client_script")
