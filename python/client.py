#!/usr/bin/env python3
"""The original one-shot client: sends a message (or those given), prints the reply, exits.

A thin shim over the Rust core: ``sockdemo.cli.basic_client_script``. Run ``client.py --help``.
"""

if __name__ == "__main__":
    from _launch import run

    run("basic_client_script")
