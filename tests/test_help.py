"""help() is the documentation: real signatures with their defaults, and a
docstring on everything public. And every command's --help tells the truth."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest

import sockdemo

PUBLIC = [
    sockdemo.Server,
    sockdemo.Client,
    sockdemo.bench,
    sockdemo.generate_self_signed,
    *(
        getattr(cls, name)
        for cls in (sockdemo.Server, sockdemo.Client)
        for name in dir(cls)
        if not name.startswith("_")
    ),
]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: getattr(o, "__qualname__", repr(o)))
def test_everything_public_has_a_docstring(obj) -> None:
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 20, obj
    assert "_sockdemo.pyi" not in doc  # help() shows this text, not the stub's


def signature(obj: object) -> inspect.Signature:
    return inspect.signature(obj)  # type: ignore[arg-type]


# Python 3.9's limited API gives an extension class no text signature.
CLASS_SIGNATURES = pytest.mark.skipif(
    sys.version_info < (3, 10), reason="extension classes have signatures from Python 3.10"
)


def defaults(obj: object) -> dict[str, object]:
    return {
        name: p.default
        for name, p in signature(obj).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_functions_show_the_real_defaults() -> None:
    bench = defaults(sockdemo.bench)
    assert bench["host"] == sockdemo.DEFAULT_HOST
    assert bench["port"] == sockdemo.DEFAULT_PORT
    assert bench["prefix"] == sockdemo.DEFAULT_PREFIX
    assert Ellipsis not in bench.values()


@CLASS_SIGNATURES
def test_classes_show_the_real_defaults() -> None:
    server = defaults(sockdemo.Server)
    assert server["host"] == sockdemo.DEFAULT_HOST
    assert server["port"] == 0
    assert server["reply_prefix"] == sockdemo.DEFAULT_PREFIX
    assert server["buffer_size"] == sockdemo.DEFAULT_BUFFER_SIZE
    assert server["max_message_size"] == sockdemo.DEFAULT_MAX_MESSAGE_SIZE
    assert server["max_clients"] == sockdemo.DEFAULT_MAX_CLIENTS
    assert server["max_buffered_bytes"] == sockdemo.DEFAULT_MAX_BUFFERED_BYTES
    assert server["evict_idle_after"] == sockdemo.DEFAULT_EVICT_IDLE_AFTER
    assert server["max_handshakes"] == sockdemo.DEFAULT_MAX_HANDSHAKES
    assert server["handshake_timeout"] == sockdemo.DEFAULT_HANDSHAKE_TIMEOUT
    assert server["message_timeout"] == sockdemo.DEFAULT_MESSAGE_TIMEOUT
    assert server["write_timeout"] == sockdemo.DEFAULT_WRITE_TIMEOUT
    assert server["shutdown_timeout"] == sockdemo.DEFAULT_SHUTDOWN_TIMEOUT
    client = defaults(sockdemo.Client)
    assert client["host"] == sockdemo.DEFAULT_HOST
    assert client["port"] == sockdemo.DEFAULT_PORT
    assert client["max_message_size"] == sockdemo.DEFAULT_MAX_MESSAGE_SIZE
    for obj in (sockdemo.Server, sockdemo.Client):
        assert Ellipsis not in defaults(obj).values(), obj


@CLASS_SIGNATURES
def test_the_signatures_are_the_ones_the_constructors_take() -> None:
    # Every keyword help() shows is accepted.
    with sockdemo.Server(**defaults(sockdemo.Server)) as server:  # type: ignore[arg-type]
        client_defaults = defaults(sockdemo.Client)
        client_defaults["port"] = server.server_address[1]
        server.start()
        with sockdemo.Client(**client_defaults) as client:  # type: ignore[arg-type]
            assert client.request("hi") == "Server received: hi"


COMMANDS = [
    ["-m", "sockdemo", "server"],
    ["-m", "sockdemo", "client"],
    ["-m", "sockdemo", "bench"],
    ["-m", "sockdemo", "cert"],
    ["python/server.py"],
    ["python/server.v2.py"],
    ["python/client.py"],
    ["python/client.v2.py"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_mentions_only_options_that_exist(argv) -> None:
    entries = option_entries(help_of(argv))
    declared = set(entries)
    for name, text in entries.items():
        # Every option says what it does...
        assert len(text.split()) >= 3, (name, text)
        # ...and the options its help refers to are options of this command.
        mentioned = set(re.findall(r"--[a-z][a-z-]*[a-z]", text))
        assert mentioned <= declared, (name, mentioned - declared)


def option_entries(shown: str) -> dict[str, str]:
    """`--name` -> its help text, from argparse's options section."""
    # ("optional arguments:" before Python 3.10)
    section = re.split(r"^(?:options|optional arguments):\n", shown, flags=re.MULTILINE)[1]
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=  -)", section):
        spec, _, text = block.strip().partition("  ")
        names = re.findall(r"--[a-z][a-z-]*", spec)
        if names:
            # The help starts after the option's spelling, on its line or the next.
            entries[names[0]] = " ".join(text.split())
    return entries


def help_of(argv: list[str]) -> str:
    env = dict(os.environ, COLUMNS="500")
    return subprocess.run(
        [sys.executable, *argv, "--help"], capture_output=True, text=True, check=True, env=env
    ).stdout


@pytest.mark.parametrize("argv", [["client"], ["bench"]])
def test_clients_do_not_offer_port_zero(argv) -> None:
    assert "free port" not in help_of(["-m", "sockdemo", *argv])
