"""Task families of the mail app."""

from __future__ import annotations

import random

from env_server.actions import format_value as q
from env_server.sim.apps.mail import reply_subject
from env_server.tasks import app_gui
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import PEOPLE, WORDS, place, text_files

SUBJECTS = (
    "Lunch on Friday", "Project update", "Quarterly report", "Team meeting", "Holiday plans",
    "Budget review", "Invoice 2041", "Conference call", "Birthday party", "New office",
    "Weekly summary", "Travel booking", "Server maintenance", "Design feedback", "Contract draft",
    "Welcome aboard", "Book club", "Training session", "Parking permit", "Volunteer day",
    "Garden tools", "Movie night", "Recipe swap", "Photo album", "Yoga class", "Concert tickets",
    "Library books", "Car repair", "Piano lesson", "Bike ride", "Board games", "Cooking class",
)


def address(person: str) -> str:
    return f"{person}@example.com"


def sentence(rng: random.Random, n: int = 4) -> str:
    return " ".join(rng.sample(WORDS, n))


def only_sent(desktop) -> dict | None:
    """The single sent email, or None if there are none or several."""
    sent = desktop.state()["mail"]["sent"]
    return sent[0] if len(sent) == 1 else None


def inbox_setup(rng: random.Random, subject: str, k: int) -> list[dict]:
    """``k`` seeded emails from different people; the first has ``subject``."""
    people = rng.sample(PEOPLE, k)
    others = rng.sample([s for s in SUBJECTS if s != subject], k - 1)
    return [{"sender": address(who), "subject": subj, "body": sentence(rng, 5)}
            for who, subj in zip(people, [subject, *others], strict=True)]


def deliver_all(desktop, emails: list[dict]) -> None:
    mail = desktop.apps["mail"]
    for e in emails:
        mail.deliver(e["sender"], e["subject"], e["body"], tuple(e.get("attachments", ())))


class SendNote(TaskFamily):
    name = "mail.send_note"
    apps = ("mail",)
    max_steps = 12

    def sample(self, rng, split):
        return {"to": address(rng.choice(PEOPLE)), "subject": pick(rng, SUBJECTS, split)[0],
                "body": sentence(rng)}

    def instruction(self, p):
        return f"Send an email to {p['to']} with the subject '{p['subject']}' and the text: {p['body']}"

    def check(self, desktop, p):
        m = only_sent(desktop)
        return (m is not None and m["to"] == p["to"] and m["subject"] == p["subject"]
                and m["body"].strip() == p["body"])

    def api_plan(self, p):
        return [f"mail.send({q(p['to'])}, {q(p['subject'])}, {q(p['body'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.mail_compose(ui, p["to"], p["subject"], p["body"])
        yield ui.click("button", "Send")


class Reply(TaskFamily):
    name = "mail.reply"
    apps = ("mail",)
    max_steps = 10

    def sample(self, rng, split):
        subject = pick(rng, SUBJECTS, split)[0]
        emails = inbox_setup(rng, subject, 3)
        rng.shuffle(emails)
        target = next(e for e in emails if e["subject"] == subject)
        return {"emails": emails, "sender": target["sender"], "subject": subject, "text": sentence(rng, 3)}

    def setup(self, desktop, p):
        deliver_all(desktop, p["emails"])

    def instruction(self, p):
        return f"Reply to the email '{p['subject']}' from {p['sender']} with the text: {p['text']}"

    def check(self, desktop, p):
        m = only_sent(desktop)
        return (m is not None and m["to"] == p["sender"] and m["subject"] == reply_subject(p["subject"])
                and m["body"].strip() == p["text"])

    def api_plan(self, p):
        return [f"mail.reply({q(p['subject'])}, {q(p['text'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.mail_open(ui, p["sender"], p["subject"])
        yield ui.click("button", "Reply")
        yield ui.type(p["text"])
        yield ui.click("button", "Send")


class AttachFile(TaskFamily):
    """Held out: send a file from the virtual file system as an attachment."""

    name = "mail.attach_file"
    apps = ("mail", "files")
    max_steps = 14

    def sample(self, rng, split):
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}", "content": sentence(rng, 6) + "\n",
                "to": address(rng.choice(PEOPLE)), "subject": pick(rng, SUBJECTS, split)[0]}

    def setup(self, desktop, p):
        desktop.vfs.write(p["path"], p["content"])

    def instruction(self, p):
        return f"Email the file {p['path']} to {p['to']} as an attachment, with the subject '{p['subject']}'."

    def check(self, desktop, p):
        m = only_sent(desktop)
        name = p["path"].rsplit("/", 1)[1]
        return (m is not None and m["to"] == p["to"] and m["subject"] == p["subject"]
                and m["attachments"] == {name: p["content"]})

    def api_plan(self, p):
        return [f"mail.attach({q(p['path'])})", f"mail.send({q(p['to'])}, {q(p['subject'])}, \"\")"]

    def gui_plan(self, p, ui):
        yield from app_gui.mail_compose(ui, p["to"], p["subject"])
        yield ui.click("button", "Attach")
        yield ui.type(p["path"])
        yield ui.key("enter")
        yield ui.click("button", "Send")


class ReplyMissing(TaskFamily):
    """Infeasible: the email to answer is not in the inbox."""

    name = "mail.reply_missing"
    apps = ("mail",)
    feasible = False
    max_steps = 8

    def sample(self, rng, split):
        subject = pick(rng, SUBJECTS, split)[0]
        emails = inbox_setup(rng, subject, 3)[1:]  # the asked-for email is left out
        return {"emails": emails, "sender": address(rng.choice(PEOPLE)), "subject": subject,
                "text": sentence(rng, 3)}

    def setup(self, desktop, p):
        deliver_all(desktop, p["emails"])

    def instruction(self, p):
        return f"Reply to the email '{p['subject']}' from {p['sender']} with the text: {p['text']}"

    def check(self, desktop, p):
        return not desktop.state()["mail"]["sent"]

    def api_plan(self, p):
        return [f"mail.reply({q(p['subject'])}, {q(p['text'])})"]

    def gui_plan(self, p, ui):
        yield from ui.open_app("Mail")


FAMILIES = (SendNote(), Reply(), AttachFile(), ReplyMissing())
HELDOUT = ("mail.attach_file",)
