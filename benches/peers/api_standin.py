# benches/run's stand-in for the API's internal surface (proto/src/api.rs): one sandbox `sbx1` whose daemon is
# @DAEMON@, and any key authorized for it. sandbar-proxy asks it once and caches the answers, so it is off the
# measured path.
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

route = {"sandboxId": "sbx1", "organizationId": "org", "state": "started", "daemonAddr": "@DAEMON@",
         "daemonToken": "@TOKEN@", "public": False, "version": 1}


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path.startswith("/api/internal/routes/changes"):
            time.sleep(25)
            return self.send(200, {"seq": 0, "sandboxIds": []})
        if self.path == "/api/internal/routes/sbx1":
            return self.send(200, route)
        self.send(404, {"message": "no"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/api/internal/authorize":
            return self.send(200, {"organizationId": "org", "ttlSecs": 3600})
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("api ready", s.server_address[1], flush=True)
s.serve_forever()
