"""Mail: an inbox of seeded messages and a sent folder; read, reply, compose with attachments from the
virtual file system, save attachments to it, delete. Messages are found by subject in the API."""

from __future__ import annotations

import re
from dataclasses import dataclass

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.vfs import HOME, normalize, split
from env_server.sim.widgets import UI, Command

ME = "user@sim.local"
_ADDRESS_RE = re.compile(r"[A-Za-z0-9._+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
ROW_H = 30
LINE_H = 20
MAX_BODY_LINES = 10
MAX_LISTED = 16


@dataclass
class Message:
    sender: str
    to: str
    subject: str
    body: str
    attachments: tuple[tuple[str, str], ...] = ()  # (file name, content)

    def as_dict(self) -> dict:
        return {"from": self.sender, "to": self.to, "subject": self.subject, "body": self.body,
                "attachments": dict(self.attachments)}


def reply_subject(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def check_address(address: str) -> str:
    address = address.strip()
    if not _ADDRESS_RE.fullmatch(address):
        raise AppError(f"{address!r} is not an email address like name@example.com")
    return address


class MailApp(App):
    name = "mail"
    title = "Mail"
    API = (
        api("mail.open", ("subject", "str"), doc="show the inbox email with this subject"),
        api("mail.send", ("to", "str"), ("subject", "str"), ("body", "str"),
            doc="send an email (with the files attached to the draft)"),
        api("mail.reply", ("subject", "str"), ("body", "str"), doc="reply to the inbox email with this subject"),
        api("mail.attach", ("path", "str"), doc="attach a file to the draft"),
        api("mail.save_attachment", ("subject", "str"), ("path", "str"),
            doc="save the attachment of an inbox email to a file or into a folder"),
        api("mail.delete", ("subject", "str"), doc="delete the inbox email with this subject"),
    )
    OPENS_WINDOW = frozenset({"open", "attach"})

    def __init__(self, desktop):
        super().__init__(desktop)
        self.inbox: list[Message] = []
        self.sent: list[Message] = []
        self.folder = "Inbox"
        self.view: tuple = ("list",)  # ("list",) | ("message", folder, index) | ("compose",)
        self.draft_attachments: list[tuple[str, str]] = []
        self.pending: tuple | None = None  # attachment chosen for the Save Attachment dialog
        self.fields.update({"to": "", "subject": "", "body": ""})
        self.deliver("admin@sim.local", "Welcome to Mail", "Your mailbox is ready.\nHave a nice day.")

    # ----------------------------------------------------------------- model
    def deliver(self, sender: str, subject: str, body: str,
                attachments: tuple[tuple[str, str], ...] = ()) -> None:
        """Put a message into the inbox (task setup)."""
        self.inbox.append(Message(sender, ME, subject, body, tuple(attachments)))

    def find(self, subject: str) -> int:
        want = subject.strip().lower()
        for i, msg in enumerate(self.inbox):
            if msg.subject.lower() == want:
                return i
        listed = ", ".join(repr(m.subject) for m in self.inbox[:6]) or "the inbox is empty"
        raise AppError(f"no email with subject {subject!r} in the inbox (subjects: {listed})")

    def _messages(self, folder: str) -> list[Message]:
        return self.inbox if folder == "Inbox" else self.sent

    def _current(self) -> Message:
        if self.view[0] != "message":
            raise AppError("open an email first")
        return self._messages(self.view[1])[self.view[2]]

    def _send(self, to: str, subject: str, body: str) -> str:
        to = check_address(to)
        subject = subject.strip()
        if not subject:
            raise AppError("the email has no subject")
        self.sent.append(Message(ME, to, subject, body, tuple(self.draft_attachments)))
        self._reset_draft()
        if self.view[0] == "compose":
            self.view = ("list",)
        return f"email sent to {to}"

    def _reset_draft(self) -> None:
        self.draft_attachments = []
        self.fields.update({"to": "", "subject": "", "body": ""})

    def _save(self, msg: Message, path: str) -> str:
        if not msg.attachments:
            raise AppError(f"the email {msg.subject!r} has no attachment")
        path = normalize(path)
        if self.vfs.is_dir(path):
            for name, content in msg.attachments:
                self.vfs.write(f"{path.rstrip('/')}/{name}", content)
            return f"saved {len(msg.attachments)} file(s) into {path}"
        if len(msg.attachments) > 1:
            raise AppError("this email has several attachments; give a folder to save them into")
        self.vfs.write(path, msg.attachments[0][1])
        return f"saved {path}"

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        ui.button("Compose", x + 8, y + 8, 150, 32, ("compose",))
        for i, folder in enumerate(("Inbox", "Sent")):
            ui.add("link", folder, x + 8, y + 52 + i * 30, 150, 28, click=("folder", folder),
                   states=("selected",) if folder == self.folder else ())
        lx, lw = x + 168, 360
        messages = self._messages(self.folder)
        ui.label(f"{self.folder}: {len(messages)} email(s)", lx, y + 12, lw, 24, role="heading")
        for i, msg in enumerate(messages[:MAX_LISTED]):
            who = msg.sender if self.folder == "Inbox" else f"To {msg.to}"
            selected = self.view == ("message", self.folder, i)
            ui.add("list item", f"{who}: {msg.subject}", lx, y + 44 + i * ROW_H, lw, ROW_H - 2,
                   click=("open", self.folder, i), states=("selected",) if selected else ())
        px, pw = x + 540, w - 548
        if self.view[0] == "message":
            self._build_message(ui, px, y, pw)
        elif self.view[0] == "compose":
            self._build_compose(ui, px, y, pw)
        else:
            ui.label("Select an email to read it.", px, y + 12, pw, 24, role="status")
        if self.dialog is not None:
            self._build_dialog(ui, px, y, pw)

    def _build_message(self, ui: UI, px: int, y: int, pw: int) -> None:
        msg = self._current()
        for i, text in enumerate((f"From: {msg.sender}", f"To: {msg.to}", f"Subject: {msg.subject}")):
            ui.label(text, px, y + 8 + i * 28, pw, 24)
        ui.button("Reply", px, y + 96, 90, 30, ("reply",))
        ui.button("Delete", px + 100, y + 96, 90, 30, ("delete",))
        lines = msg.body.split("\n")
        for i, line in enumerate(lines[:MAX_BODY_LINES]):
            if line.strip():
                ui.add("text line", line, px, y + 136 + i * LINE_H, pw, LINE_H)
        ay = y + 144 + MAX_BODY_LINES * LINE_H
        for k, (name, _) in enumerate(msg.attachments):
            ui.add("attachment", name, px, ay + k * 36, 300, 30)
            ui.button(f"Save {name}", px + 310, ay + k * 36, 220, 30, ("save_att", *self.view[1:], k))

    def _build_compose(self, ui: UI, px: int, y: int, pw: int) -> None:
        for i, label in enumerate(("To", "Subject")):  # drawn labels; the field rows carry the names
            ui.label(label, px, y + 12 + i * 40, 80, 24, visible=False)
            ui.field(label, self.fields[label.lower()], px + 80, y + 8 + i * 40, pw - 80, 32, label.lower(),
                     focused=self.focused(label.lower()))
        body_h = 200
        ui.add("text area", "Body", px, y + 88, pw, body_h, field="body", multiline=True,
               states=("editable",), text="")
        for i, line in enumerate(self.fields["body"].split("\n")[-(body_h // LINE_H) + 1:]):
            if line:
                ui.add("text line", line, px + 4, y + 92 + i * LINE_H, pw - 8, LINE_H, field="body",
                       multiline=True)
        by = y + 88 + body_h + 8
        for i, (label, cmd) in enumerate((("Attach", ("attach",)), ("Send", ("send",)),
                                          ("Discard", ("discard",)))):
            ui.button(label, px + i * 100, by, 90, 32, cmd)
        for k, (name, _) in enumerate(self.draft_attachments[:4]):
            ui.add("attachment", name, px, by + 40 + k * 28, 300, 26)

    def _build_dialog(self, ui: UI, px: int, y: int, pw: int) -> None:
        dw, dh = 520, 140  # low in the reading pane, below its content
        dx, dy = px + (pw - dw) // 2, y + 480
        ui.add("dialog", self.dialog, dx, dy, dw, dh)
        ui.field("Path", self.fields.get("path", ""), dx + 16, dy + 16, dw - 32, 34, "path",
                 focused=self.focused("path"))
        ui.button("Attach" if self.dialog == "Attach File" else "Save", dx + dw - 236, dy + dh - 50, 120, 34,
                  ("ok",))
        ui.button("Cancel", dx + dw - 108, dy + dh - 50, 92, 34, ("cancel",))

    # ----------------------------------------------------------------- events
    def on_command(self, cmd: Command) -> str | None:
        op = cmd[0]
        if op == "folder":
            self.folder = cmd[1]
            self.view = ("list",)
            return None
        if op == "open":
            self.view = ("message", cmd[1], cmd[2])
            return None
        if op == "compose":
            if self.view[0] != "compose":
                self._reset_draft()
                self.view = ("compose",)
            self.focus("to")
            return None
        if op == "reply":
            msg = self._current()
            self._reset_draft()
            self.fields.update({"to": msg.sender, "subject": reply_subject(msg.subject)})
            self.view = ("compose",)
            self.focus("body")
            return None
        if op == "delete":
            msg = self._current()
            self._messages(self.view[1]).remove(msg)
            self.view = ("list",)
            return None
        if op == "save_att":
            msg = self._messages(cmd[1])[cmd[2]]
            self.pending = (msg, cmd[3])
            self.open_dialog("Save Attachment", {"path": f"{HOME}/Downloads/{msg.attachments[cmd[3]][0]}"})
            self.desktop.select_all = True
            return None
        if op == "attach":
            self.open_dialog("Attach File", {"path": ""})
            return None
        if op == "send":
            return self._send(self.fields["to"], self.fields["subject"], self.fields["body"])
        if op == "discard":
            self._reset_draft()
            self.view = ("list",)
            self.focus(None)
            return None
        if op == "ok":
            return self._confirm()
        if op == "cancel":
            self.close_dialog()
            return None
        return super().on_command(cmd)

    def _confirm(self) -> str | None:
        path = self.fields.get("path", "")
        if self.dialog == "Attach File":
            result = self.api_attach(path)
        else:
            msg, k = self.pending
            result = self._save(Message(msg.sender, msg.to, msg.subject, msg.body, (msg.attachments[k],)),
                                path)
        self.close_dialog()
        return result

    def on_submit(self, key: str) -> str | None:
        if key == "path" and self.dialog is not None:
            return self._confirm()
        if key == "to":
            self.focus("subject")
        elif key == "subject":
            self.focus("body")
        return None

    def on_close(self) -> None:
        super().on_close()
        self.pending = None

    def state(self) -> dict:
        return {"inbox": [m.as_dict() for m in self.inbox], "sent": [m.as_dict() for m in self.sent]}

    # ----------------------------------------------------------------- API
    def api_open(self, subject: str) -> None:
        self.folder = "Inbox"
        self.view = ("message", "Inbox", self.find(subject))

    def api_send(self, to: str, subject: str, body: str) -> str:
        return self._send(to, subject, body)

    def api_reply(self, subject: str, body: str) -> str:
        msg = self.inbox[self.find(subject)]
        return self._send(msg.sender, reply_subject(msg.subject), body)

    def api_attach(self, path: str) -> str:
        path = normalize(path)
        if self.vfs.is_dir(path):
            raise AppError(f"is a folder, not a file: {path}")
        content = self.vfs.read(path)
        name = split(path)[1]
        self.draft_attachments = [a for a in self.draft_attachments if a[0] != name] + [(name, content)]
        if self.view[0] != "compose":
            self.view = ("compose",)
        return f"attached {name}"

    def api_save_attachment(self, subject: str, path: str) -> str:
        return self._save(self.inbox[self.find(subject)], path)

    def api_delete(self, subject: str) -> None:
        index = self.find(subject)
        del self.inbox[index]
        if self.view[0] == "message" and self.view[1] == "Inbox":
            self.view = ("list",)
