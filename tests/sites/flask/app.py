"""A small Flask site as Flask sites are written: Flask-Login for who is signed in, Flask-Session
keeping the session in Redis (the browser holds only an opaque `session` cookie), a sign-in and a
sign-out route, and `GET /api/me`, the endpoint the broker asks ([[session.endpoint]]). Test-only.

    python app.py --port 0 --redis redis://127.0.0.1:PORT

Prints one JSON line {"url": "http://127.0.0.1:PORT"} when it listens and exits when its stdin
closes. Routes:
    POST /login   {"user": "bob", "roles": [...]}   signs in (login_user)
    POST /logout                                    logout_user; the server-side session is cleared
    GET  /api/me                                    200 {"user": {"id", "email", "name"}, "roles"} or 401
    GET  /account                                   @login_required page: 302 to /login when signed out
    GET  /__received                                what every /api/me or /account request carried
"""

import argparse
import json
import sys
import threading

import redis
from flask import Flask, jsonify, request
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_session import Session
from werkzeug.serving import make_server


class User(UserMixin):
    def __init__(self, user_id: str, roles: list[str]):
        self.id = user_id
        self.roles = roles


def create_app(redis_url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="flask-site-test-secret",
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.from_url(redis_url),
        SESSION_KEY_PREFIX="flask:",
        SESSION_COOKIE_SAMESITE="Lax",
    )
    Session(app)
    login = LoginManager(app)
    login.login_view = "login_page"
    # The user table: who signed in with which roles (a real site has a database).
    users: dict[str, list[str]] = {}
    received: list[dict] = []

    @login.user_loader
    def load_user(user_id: str):
        roles = users.get(user_id)
        return None if roles is None else User(user_id, roles)

    @app.before_request
    def record() -> None:
        if request.path not in ("/api/me", "/account"):
            return
        received.append({
            "path": request.path,
            "cookie": request.headers.get("Cookie"),
            "authorization": request.headers.get("Authorization"),
            "accept": request.headers.get("Accept"),
            "userAgent": request.headers.get("User-Agent"),
            "traceparent": request.headers.get("traceparent"),
            "forwarded": [h for h in request.headers.keys() if h.lower().startswith("x-forwarded") or h.lower() == "forwarded"],
        })

    @app.post("/login")
    def login_post():
        body = request.get_json(silent=True) or {}
        user_id = str(body.get("user", ""))
        if not user_id:
            return jsonify(error="user required"), 400
        users[user_id] = list(body.get("roles", ["chat"]))
        login_user(User(user_id, users[user_id]))
        return "", 204

    @app.get("/login")
    def login_page():
        return "<form method=post>sign in</form>"

    @app.post("/logout")
    def logout():
        logout_user()
        return "", 204

    @app.get("/api/me")
    def me():
        if not current_user.is_authenticated:
            return jsonify(error="not signed in"), 401
        return jsonify(
            user={"id": current_user.id, "email": f"{current_user.id}@example.org", "name": f"User {current_user.id}"},
            roles={role: True for role in current_user.roles},
        )

    @app.get("/account")
    @login_required
    def account():
        return jsonify(user={"id": current_user.id})

    @app.get("/__received")
    def received_list():
        return jsonify(received)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    server = make_server("127.0.0.1", args.port, create_app(args.redis), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"url": f"http://127.0.0.1:{server.port}"}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the test closes the pipe


if __name__ == "__main__":
    main()
