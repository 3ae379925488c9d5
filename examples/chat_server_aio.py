"""The chat server of chat_server.py, as one coroutine per connection.

python examples/chat_server_aio.py [PORT]    # then: sockdemo chat --port 65432
"""

import asyncio
import sys

import sockdemo.aio

nicks = {}  # every connection's nickname, by connection id


async def chat(conn):
    nicks[conn.id] = f"guest{conn.id}"
    conn.server.broadcast(f"{nicks[conn.id]} joined", exclude=conn)
    try:
        async for message in conn:
            if message.startswith("/nick "):
                old, nicks[conn.id] = nicks[conn.id], message[6:].strip()
                conn.server.broadcast(f"{old} is now {nicks[conn.id]}")
            elif message == "/who":
                await conn.send("here: " + ", ".join(sorted(nicks.values())))
            else:
                conn.server.broadcast(f"{nicks[conn.id]}: {message}", exclude=conn)
    finally:
        conn.server.broadcast(f"{nicks.pop(conn.id)} left", exclude=conn)


async def main(port):
    server = await sockdemo.aio.start_server(port=port, protocol="framed", session=chat)
    async with server:
        host, port = server.server_address[:2]
        print(f"Chat server listening on {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 65432))
    except KeyboardInterrupt:
        print("Chat server shutting down.")
