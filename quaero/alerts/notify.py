"""What each destination is sent, and sending it. Formatting is pure (``render``: the
request a destination gets for an event's payload); ``send`` does the I/O (httpx, smtplib;
both cooperate with gevent once sockets are patched) and raises :class:`DeliveryFailed`
with a short reason.

Every request carries the delivery's idempotency key (``Idempotency-Key`` header, the
e-mail's ``Message-ID``): the same event to the same destination always has the same key,
so a receiver can tell the one case where it may see a notification twice — a retry after
an attempt whose outcome Quaero could not know (it stopped while the request was out)."""
import hashlib
import json
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

from .._version import __version__

TIMEOUT = 10.0
_MARK = {"firing": "FIRING", "resolved": "RESOLVED", "test": "TEST"}


class DeliveryFailed(Exception):
    pass


def delivery_key(event_key, destination):
    return "quaero-" + hashlib.sha256(f"{event_key}\x00{destination}".encode()).hexdigest()[:40]


def _sandbox():
    from jinja2.sandbox import SandboxedEnvironment
    env = SandboxedEnvironment(autoescape=False)
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def check_template(template):
    """Why ``template`` (a webhook's body, Jinja) cannot be used, or None."""
    from jinja2 import TemplateSyntaxError
    try:
        _sandbox().from_string(template)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None


def text_of(payload, max_lines=5):
    """The notification as plain text: the summary, the link, the first lines."""
    out = [f"[{_MARK.get(payload['state'], payload['state'])}] {payload['summary']}"]
    if payload.get("url"):
        out.append(payload["url"])
    for line in payload.get("lines", [])[:max_lines]:
        where = f"job {line['job_id']}#L{line['line_number']}" if line.get("job_id") else "service"
        out.append(f"{line['timestamp']} {line['level']:5} [{where}] {line['message']}")
    return "\n".join(out)


def render(dest, payload, key):
    """``(method, url, headers, body bytes)`` for an HTTP destination."""
    headers = {"User-Agent": f"quaero/{__version__}", "Idempotency-Key": key}
    if dest.type == "webhook":
        if dest.template:
            body = _sandbox().from_string(dest.template).render(payload=payload, **payload)
        else:
            body = json.dumps(payload, ensure_ascii=False)
        headers["Content-Type"] = dest.content_type
        headers.update(dest.headers)
        return "POST", dest.url, headers, body.encode()
    if dest.type == "slack":
        headers["Content-Type"] = "application/json"
        text = text_of(payload)
        first, _, rest = text.partition("\n")
        body = {"text": f"*{first}*" + (f"\n```{rest}```" if rest else "")}
        return "POST", dest.url, headers, json.dumps(body, ensure_ascii=False).encode()
    if dest.type == "ntfy":
        state = payload["state"]
        headers.update({
            "Title": _header(f"Quaero {_MARK.get(state, state).lower()}: {payload['rule']}"),
            "Priority": dest.priority or {"firing": "high", "resolved": "default"}.get(state, "low"),
            "Tags": {"firing": "rotating_light", "resolved": "white_check_mark"}.get(state, "test_tube"),
            "Content-Type": "text/plain; charset=utf-8"})
        if payload.get("url"):
            headers["Click"] = payload["url"]
        if dest.token:
            headers["Authorization"] = f"Bearer {dest.token}"
        return "POST", dest.url, headers, text_of(payload).encode()
    raise ValueError(dest.type)


def _header(text):
    """ntfy reads headers as latin-1: other characters would not arrive; keep the rest."""
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")[:200]


def email_message(dest, payload, key, sender):
    msg = EmailMessage()
    state = _MARK.get(payload["state"], payload["state"])
    msg["Subject"] = (dest.subject or "[Quaero {state}] {rule}").format(
        state=state, rule=payload["rule"]).replace("\n", " ")
    msg["From"] = sender
    msg["To"] = ", ".join(dest.to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{key}@quaero>"
    msg.set_content(text_of(payload, max_lines=20) + "\n")
    return msg


def send(dest, payload, key, smtp_url=None, smtp_from=None, client=None):
    """Deliver, or :class:`DeliveryFailed` saying why."""
    if dest.type == "email":
        return _send_email(dest, payload, key, smtp_url, smtp_from)
    import httpx
    method, url, headers, body = render(dest, payload, key)
    try:
        if client is None:
            with httpx.Client(timeout=TIMEOUT) as own:
                r = own.request(method, url, headers=headers, content=body)
        else:
            r = client.request(method, url, headers=headers, content=body)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{exc.__class__.__name__}: {exc}"[:300]) from None
    if not 200 <= r.status_code < 300:
        raise DeliveryFailed(f"HTTP {r.status_code}: {r.text[:200]}")


def smtp_settings(url):
    """``(mode, host, port, user, password)`` of a ``QUAERO_SMTP_URL``; ValueError if it
    is not one (``smtp://``, ``smtp+starttls://``, ``smtps://``)."""
    parts = urlsplit(url)
    modes = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("tls", 465)}
    if parts.scheme not in modes or not parts.hostname:
        raise ValueError("QUAERO_SMTP_URL must be smtp://, smtp+starttls:// or smtps:// "
                         "with a host")
    mode, port = modes[parts.scheme]
    return (mode, parts.hostname, parts.port or port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


def _send_email(dest, payload, key, smtp_url, smtp_from):
    if not smtp_url:
        raise DeliveryFailed("QUAERO_SMTP_URL is not set")
    try:
        mode, host, port, user, password = smtp_settings(smtp_url)
    except ValueError as exc:
        raise DeliveryFailed(str(exc)) from None
    sender = smtp_from or f"quaero@{host}"
    msg = email_message(dest, payload, key, sender)
    try:
        if mode == "tls":
            smtp = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(host, port, timeout=TIMEOUT)
        with smtp:
            if mode == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if user:
                smtp.login(user, password or "")
            refused = smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"{exc.__class__.__name__}: {exc}"[:300]) from None
    if refused:
        raise DeliveryFailed(f"recipients refused: {', '.join(refused)}"[:300])
