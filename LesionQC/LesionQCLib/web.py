"""``lesionqc serve``: the blinded rating page in a web browser, a second view of the review controller.

The page (``Resources/Web``: HTML, script, NiiVue) shows one item at a time:
the scan with the item's mask in NiiVue, the session's Likert scale, flags and
comment. Every action goes to the same :class:`ReviewController` the Slicer
panel uses, one per rater, so every score lands in the same crash-safe rater
table (``SESSION/ratings/<rater>.csv``) through the same rules.

Who rates:

- on 127.0.0.1 (the default) the rater types their id on the page (checked like
  every rater id); only requests whose ``Host`` is the loopback address are answered;
- on another ``--host`` each rater has a token (printed once by ``lesionqc serve``,
  stored as a salted scrypt hash in ``SESSION/serve-tokens.json``); without a
  valid token nothing at all is served.

Blinding on the wire: volumes are addressed by opaque ids (an HMAC of the rater,
case and item under a secret drawn at start), masks are re-encoded as uncompressed
uint8 NIfTI with a bare header (same size and bytes for every item of a case
save the voxels), no file names, dates or ETags are sent, every JSON answer
has the same keys, and the key file is never served: only files under
``SESSION/cases/`` named in ``session.json`` can be read.

Example:
    >>> from LesionQCLib.web import create_app
    >>> app = create_app("qc-session")               # doctest: +SKIP
    >>> app.test_client().get("/").status_code       # doctest: +SKIP
    200
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import flask
import nibabel as nib
import numpy as np

from .errors import LesionQCError, RaterTableError, SessionError
from .rater_table import MAX_COMMENT_LENGTH, validate_rater_id
from .review_controller import ReviewController
from .session import CaseView, SessionView, segment_color

log = logging.getLogger(__name__)

TOKENS_FILE = "serve-tokens.json"
TOKENS_FORMAT = "lesionqc-serve-tokens"
#: scrypt cost: about 50 ms per check, paid at login only (the session cookie carries the rater after).
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
#: Largest request body: a comment of MAX_COMMENT_LENGTH characters (4 bytes each in UTF-8) and room to spare.
MAX_REQUEST_BYTES = 4 * MAX_COMMENT_LENGTH + 4096
LOOPBACK = "127.0.0.1"
#: The files of the page: name -> content type. Nothing else under Resources/Web is served.
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "lesionqc.js": "text/javascript; charset=utf-8",
    "lesionqc.css": "text/css; charset=utf-8",
    "niivue.umd.js": "text/javascript; charset=utf-8",
}
PathLike = Union[str, Path]
#: What reading a damaged NIfTI file raises.
UNREADABLE = (LesionQCError, OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError)


def web_folder() -> Path:
    """``LesionQC/Resources/Web``: the page and the vendored NiiVue (next to the Lib, as the scales)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "Web"


# --------------------------------------------------------------------------- tokens


def _scrypt(token: str, salt: bytes, cost: Dict[str, int]) -> bytes:
    return hashlib.scrypt(token.encode("utf-8"), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **cost)


class TokenStore:
    """Per-rater tokens of a session served beyond this machine, kept as salted scrypt hashes.

    Example:
        >>> store = TokenStore.load(SessionView.load("qc-session"))   # doctest: +SKIP
        >>> token = store.issue("alice")      # shown once, never stored  # doctest: +SKIP
        >>> store.rater_of(token)                                       # doctest: +SKIP
        'alice'
    """

    def __init__(self, path: Path, hashes: Dict[str, Tuple[bytes, bytes, Dict[str, int]]]) -> None:
        self.path = path
        self.hashes = hashes  # rater -> (salt, scrypt hash, scrypt cost it was made with)

    @classmethod
    def load(cls, session: SessionView) -> "TokenStore":
        path = session.folder / TOKENS_FILE
        if not path.exists():
            return cls(path, {})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != TOKENS_FORMAT:
                raise ValueError("not a token file")
            hashes = {validate_rater_id(rater): (bytes.fromhex(entry["salt"]), bytes.fromhex(entry["scrypt"]),
                                                 {name: int(entry[name]) for name in SCRYPT})
                      for rater, entry in data["raters"].items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RaterTableError) as error:
            raise SessionError(f"{path}: cannot read the raters' tokens ({error}); delete it to issue new ones"
                               ) from None
        return cls(path, hashes)

    def issue(self, rater: str) -> str:
        """A new token for ``rater`` (its old one stops working); saved hashed at once, returned in clear."""
        from SpinalCordSegLib.imaging.fileutil import write_text_atomic

        token = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        self.hashes[validate_rater_id(rater)] = (salt, _scrypt(token, salt, SCRYPT), dict(SCRYPT))
        data = {"format": TOKENS_FORMAT, "raters": {r: {"salt": s.hex(), "scrypt": h.hex(), **cost}
                                                    for r, (s, h, cost) in sorted(self.hashes.items())}}
        try:
            write_text_atomic(json.dumps(data, indent=2) + "\n", self.path)
        except OSError as error:
            raise SessionError(f"{self.path}: cannot save the raters' tokens ({error})") from None
        return token

    def rater_of(self, token: str) -> Optional[str]:
        """The rater whose token this is, else None; every stored hash is checked, in constant time each."""
        found = None
        for rater, (salt, digest, cost) in self.hashes.items():
            if hmac.compare_digest(_scrypt(token, salt, cost), digest):
                found = rater
        return found


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Volume:
    """A file the page may load: the scan (served as stored) or a mask (re-encoded)."""

    path: Path
    is_mask: bool
    suffix: str  # ".nii" or ".nii.gz": NiiVue reads the format from the URL
    case_id: str


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def uniform_mask_bytes(path: Path) -> bytes:
    """A mask as uncompressed uint8 NIfTI with a header made only of its grid (no notes, names or dates)."""
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3 or not np.all(np.isfinite(data)) or data.min() < 0 or data.max() > 255:
        raise SessionError(f"{path}: not a 3D label map of values 0-255")
    uniform = nib.Nifti1Image(np.round(data).astype(np.uint8), image.affine)
    uniform.set_qform(image.affine, code=1)
    uniform.set_sform(image.affine, code=1)
    return uniform.to_bytes()


# --------------------------------------------------------------------------- the server's state


class Review:
    """The raters' controllers of one served session, and the opaque ids the page sees."""

    def __init__(self, session: SessionView, tokens: Optional[TokenStore]) -> None:
        self.session = session
        self.tokens = tokens  # None: raters give their id (127.0.0.1 only)
        self.secret = secrets.token_bytes(32)  # drawn per start: ids of a past run mean nothing
        self.lock = threading.Lock()  # one action at a time: every action ends in an fsync'd row
        self.controllers: Dict[str, ReviewController] = {}
        self._volumes: Dict[str, Dict[str, Volume]] = {}  # rater -> volume id -> volume
        self._mask_cache: Dict[Path, bytes] = {}

    def opaque(self, rater: str, *parts: str) -> str:
        """An id that tells nothing of what it names and differs from rater to rater."""
        message = "\0".join((rater,) + parts).encode("utf-8")
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def controller(self, rater: str) -> ReviewController:
        """The rater's controller, opened at the first item not done (the rater's table is read once)."""
        if rater not in self.controllers:
            controller = ReviewController(None)
            controller.open_session(self.session.folder, rater)
            self.controllers[rater] = controller
            self._volumes[rater] = dict(self._case_volumes(rater, self.session.cases))
        return self.controllers[rater]

    def _case_volumes(self, rater: str, cases: Iterable[CaseView]):
        for case in cases:
            files = [("image", case.image, False), ("image2", case.image2, False)]
            files += [("item " + item.item_id, item.path, True) for item in case.items]
            for kind, path, is_mask in files:
                if path is not None:
                    volume = Volume(path, is_mask, _suffix(path), case.case_id)
                    yield self.opaque(rater, "volume", case.case_id, kind), volume

    def volume_url(self, rater: str, case: CaseView, kind: str, path: Optional[Path]) -> Optional[str]:
        if path is None:
            return None
        return f"/volume/{self.opaque(rater, 'volume', case.case_id, kind)}{_suffix(path)}"

    def volume_bytes(self, rater: str, name: str) -> Optional[bytes]:
        """The bytes of the rater's volume ``name`` (``<id>.nii``), or None if it names none."""
        volume_id, _, suffix = name.partition(".")
        volume = self._volumes.get(rater, {}).get(volume_id)
        if volume is None or "." + suffix != volume.suffix:
            return None
        real = self._checked(volume.path)
        if real is None:
            return None
        if not volume.is_mask:
            return real.read_bytes()
        if real not in self._mask_cache:
            # Every mask of the case is encoded at the first request of one: the time the first
            # answer takes does not depend on which item was asked for.
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            for other in self._volumes[rater].values():
                other_real = self._checked(other.path) if other.is_mask and other.case_id == volume.case_id else None
                if other_real is not None and other_real != real:
                    try:
                        self._mask_cache[other_real] = uniform_mask_bytes(other_real)
                    except UNREADABLE:
                        pass  # told when that item is asked for
            self._mask_cache[real] = uniform_mask_bytes(real)
        return self._mask_cache[real]

    def _checked(self, path: Path) -> Optional[Path]:
        """``path`` resolved if it is a file under ``SESSION/cases``, else None."""
        # session.json's paths were checked at load; a link swapped in since must not lead outside cases/.
        cases = (self.session.folder / "cases").resolve()
        real = path.resolve()
        return real if cases in real.parents and real.is_file() else None

    def state(self, rater: Optional[str], error: str = "") -> Dict[str, Any]:
        """What the page shows: the same keys in every answer, whoever asks."""
        scale = self.session.scale
        answer: Dict[str, Any] = {
            "rater": rater, "error": error, "local": self.tokens is None,
            "scale": scale.to_dict(),
            "labels": [{"value": value, "name": name, "color": segment_color(value)}
                       for value, name in sorted(self.session.labels.items())],
            "item": None, "volumes": {"image": None, "image2": None, "mask": None},
        }
        controller = self.controllers.get(rater) if rater else None
        panel = controller.panel() if controller is not None else None
        status = panel.session_status if panel else ""
        if self.tokens is not None and controller is not None and controller.state is not None:
            # Raters elsewhere learn where their table is in the session, not the server's folders.
            table = controller.state.table_path
            status = status.replace(str(table), f"{table.parent.name}/{table.name}")
        answer.update({
            "session_status": status,
            "saved": panel.saved if panel else "",
            "rating_enabled": bool(panel and panel.rating_enabled),
            "case_label": panel.case_label if panel else "",
            "item_label": panel.item_label if panel else "",
            "item_count": panel.item_count if panel else 0,
            "done_count": panel.done_count if panel else 0,
            "scores": dict(panel.scores) if panel else {s: None for s in scale.structure_ids},
            "active_structure": panel.active_structure if panel else None,
            "flags": list(panel.flags) if panel else [],
            "comment": panel.comment if panel else "",
            "can_go_previous": bool(panel and panel.can_go_previous),
            "can_go_next": bool(panel and panel.can_go_next),
            "can_go_next_open": bool(panel and panel.can_go_next_open),
        })
        if controller is not None and controller.state is not None:
            case, item = controller.state.case, controller.state.item
            answer["item"] = self.opaque(rater, "item", case.case_id, item.item_id)
            answer["volumes"] = {"image": self.volume_url(rater, case, "image", case.image),
                                 "image2": self.volume_url(rater, case, "image2", case.image2),
                                 "mask": self.volume_url(rater, case, "item " + item.item_id, item.path)}
        return answer

    def act(self, rater: str, request: Dict[str, Any]) -> Dict[str, Any]:
        """Apply one action of the page to the rater's controller; raise LesionQCError / ValueError if refused."""
        controller = self.controller(rater)
        current = self.state(rater)["item"].encode()
        if not isinstance(request.get("item"), str) or not hmac.compare_digest(request["item"].encode(), current):
            raise StaleItem("this item is no longer the one shown (another tab or window moved on): showing the"
                            " current one; nothing was saved")
        action, comment = request.get("action"), request.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise ValueError("'comment' must be a string")
        if action == "score":
            structure = request.get("structure")
            if structure is not None and not isinstance(structure, str):
                raise ValueError("'structure' must be a string")
            controller.score(request.get("value"), structure, comment)
        elif action == "flag":
            if not isinstance(request.get("flag"), str) or not isinstance(request.get("checked"), bool):
                raise ValueError("a flag action needs 'flag' (a string) and 'checked' (true or false)")
            controller.set_flag(request["flag"], request["checked"])
        elif action == "comment":
            controller.set_comment(comment or "")
        elif action in ("previous", "next", "next_open"):
            controller.navigate(action, comment)
        else:
            raise ValueError(f"unknown action {action!r} (score, flag, comment, previous, next, next_open)")
        return self.state(rater)

    def close(self) -> None:
        with self.lock:
            for controller in self.controllers.values():
                controller.close()
            self.controllers.clear()


class StaleItem(LesionQCError):
    """An action for an item that is not the rater's current one (two tabs of one rater)."""


# --------------------------------------------------------------------------- the Flask application


def create_app(session_folder: PathLike, tokens: Optional[TokenStore] = None,
               review: Optional[Review] = None) -> flask.Flask:
    """The rating page's application: raters by id on 127.0.0.1 (``tokens`` None), else by token."""
    session = SessionView.load(session_folder)
    review = review or Review(session, tokens)
    app = flask.Flask("lesionqc", static_folder=None)
    app.secret_key = secrets.token_bytes(32)
    # Lax, not Strict: a rater's link opened from a mail (another site) must keep its cookie through the
    # redirect; other sites' POSTs still go without it, and a POST must be JSON anyway (no form can send that).
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="lesionqc")
    app.extensions["lesionqc"] = review

    def json_answer(body: Dict[str, Any], status: int = 200) -> flask.Response:
        response = flask.Response(json.dumps(body), status=status, mimetype="application/json")
        return response

    def rater_of_request() -> Optional[str]:
        rater = flask.session.get("rater")
        return rater if isinstance(rater, str) else None

    @app.before_request
    def guard():
        if review.tokens is None:
            # Loopback only, by name too: a page elsewhere cannot reach this server through DNS rebinding.
            host = (flask.request.host or "").rsplit(":", 1)[0]
            if host not in (LOOPBACK, "localhost"):
                return flask.Response("LesionQC serves 127.0.0.1 only\n", status=403, mimetype="text/plain")
            return None
        token = flask.request.args.get("token")
        if token is None and rater_of_request() is not None:
            return None
        rater = review.tokens.rater_of(token) if token else None  # a link given again decides again
        if rater is None:
            return flask.Response("a rater token is required (the link lesionqc serve printed)\n", status=401,
                                  mimetype="text/plain")
        flask.session["rater"] = rater
        return flask.redirect("/", code=303)  # the token leaves the address bar and the history

    @app.after_request
    def headers(response: flask.Response) -> flask.Response:
        # No dates, tags or names that could differ between items; nothing kept by caches or sent onwards.
        for name in ("ETag", "Last-Modified", "Content-Disposition"):
            response.headers.pop(name, None)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # Nothing but the page's own files, even if a session's texts held markup.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline';"
            " img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self' data: blob:;"
            " frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        return response

    @app.errorhandler(413)
    def too_large(_error):
        return json_answer(review.state(rater_of_request(), f"request larger than {MAX_REQUEST_BYTES} bytes"), 413)

    @app.get("/")
    def index():
        return static_file("index.html")

    @app.get("/favicon.ico")
    def favicon():
        return flask.Response(status=204)

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in WEB_FILES:
            flask.abort(404)
        return flask.Response((web_folder() / name).read_bytes(), mimetype=WEB_FILES[name])

    @app.get("/api/state")
    def get_state():
        rater = rater_of_request()
        with review.lock:
            try:
                if rater is not None:
                    review.controller(rater)
            except LesionQCError as error:  # the rater's table became unreadable, or was taken by Slicer
                return json_answer(review.state(None, str(error)), 500)
            return json_answer(review.state(rater))

    @app.post("/api/login")
    def login():
        body = flask.request.get_json(silent=True)
        if review.tokens is not None:  # the token has already decided who this is
            return get_state()
        if not isinstance(body, dict) or not isinstance(body.get("rater"), str):
            return json_answer(review.state(None, "send {\"rater\": \"your id\"}"), 400)
        try:
            rater = validate_rater_id(body["rater"])
            with review.lock:
                review.controller(rater)
        except LesionQCError as error:
            return json_answer(review.state(None, str(error)), 400)
        flask.session["rater"] = rater
        with review.lock:
            return json_answer(review.state(rater))

    @app.post("/api/action")
    def action():
        rater = rater_of_request()
        if rater is None:
            return json_answer(review.state(None, "give your rater id first"), 401)
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            with review.lock:
                return json_answer(review.state(rater, "the request is not a JSON object"), 400)
        with review.lock:
            try:
                return json_answer(review.act(rater, body))
            except StaleItem as error:
                return json_answer(review.state(rater, str(error)), 409)
            except (LesionQCError, ValueError, TypeError) as error:
                return json_answer(review.state(rater, str(error)), 400)

    @app.get("/volume/<name>")
    def volume(name: str):
        rater = rater_of_request()
        data = None
        if rater is not None:
            with review.lock:
                try:
                    review.controller(rater)
                    data = review.volume_bytes(rater, name)
                except UNREADABLE as error:
                    # The file's name and problem go to the server's log only: they would tell the item apart.
                    log.error("cannot serve a volume: %s", error)
                    return flask.Response("this image cannot be read; the server's log says why\n", status=500,
                                          mimetype="text/plain")
        if data is None:
            flask.abort(404)
        return flask.Response(data, mimetype="application/octet-stream")

    return app


def issue_tokens(session: SessionView, raters: List[str], renew: List[str]) -> Tuple[TokenStore, Dict[str, str]]:
    """The session's token store with a token for every rater of ``raters`` that has none and of ``renew``.

    Returns the store and the new tokens (rater -> token, to print once).
    """
    store = TokenStore.load(session)
    new = {}
    for rater in list(raters) + list(renew):
        rater = validate_rater_id(rater)
        if rater not in store.hashes or rater in renew:
            new[rater] = store.issue(rater)
    if not store.hashes:
        raise SessionError(f"{store.path}: no rater has a token: name the raters with --rater ID")
    return store, new


def serve(session_folder: PathLike, host: str = LOOPBACK, port: int = 8765, raters: Iterable[str] = (),
          renew: Iterable[str] = (), threads: int = 4) -> None:
    """Serve the rating page until interrupted, printing its address (and new tokens, once)."""
    import waitress  # a production WSGI server, pure Python

    session = SessionView.load(session_folder)
    tokens = None
    new: Dict[str, str] = {}
    if host != LOOPBACK:
        tokens, new = issue_tokens(session, list(raters), list(renew))
    review = Review(session, tokens)
    try:
        server = waitress.create_server(create_app(session.folder, tokens, review), host=host, port=port,
                                        threads=threads, ident="")
    except OSError as error:
        raise LesionQCError(f"cannot listen on {host}:{port} ({error.strerror or error}); is the port in use?"
                            " Choose another with --port") from None
    address = f"http://{host}:{server.effective_port}/"
    print(f"session {session.session_id}: {len(session.cases)} cases; ratings in {session.ratings_dir}")
    if tokens is None:
        print(f"open {address} in a browser on this machine (Ctrl+C stops)")
    else:
        for rater, token in sorted(new.items()):
            print(f"  {rater}: {address}?token={token}   (shown once; stored hashed)")
        others = sorted(set(tokens.hashes) - set(new))
        if others:
            print(f"  tokens issued before still work for: {', '.join(others)} (--new-token ID replaces one)")
        print(f"serving on {address} to raters with a token (Ctrl+C stops)")
    try:
        server.run()
    finally:
        review.close()
