#!/usr/bin/env python3
"""The original one-shot server: waits for one client, answers one message, exits.

A thin shim over the Rust core: ``sockdemo.cli.basic_server_script``. Run ``server.py --help``.
"""

if __name__ == "__main__":
    from _launch import run

    run("basic_server_script")
