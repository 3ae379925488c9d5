"""A chat server: what one client says, the others see.

python examples/chat_server.py [PORT]     # then, in two terminals:
sockdemo chat --port 65432                # /nick NAME, /who, or just talk
"""

import sys

import sockdemo


class Chat(sockdemo.Session):
    nicks = {}  # every connection's nickname, by connection id

    def connected(self):
        self.nicks[self.id] = f"guest{self.id}"
        self.server.broadcast(f"{self.nicks[self.id]} joined", exclude=self)

    def received(self, message):
        if message.startswith("/nick "):
            old, self.nicks[self.id] = self.nicks[self.id], message[6:].strip()
            self.server.broadcast(f"{old} is now {self.nicks[self.id]}")
        elif message == "/who":
            return "here: " + ", ".join(sorted(self.nicks.values()))
        else:
            self.server.broadcast(f"{self.nicks[self.id]}: {message}", exclude=self)

    def closed(self):
        self.server.broadcast(f"{self.nicks.pop(self.id)} left", exclude=self)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 65432
    with sockdemo.Server(port=port, protocol="framed", session=Chat) as server:
        host, port = server.server_address[:2]
        print(f"Chat server listening on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("Chat server shutting down.")
