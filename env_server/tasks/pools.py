"""Value pools that task parameters are drawn from (split into train / held-out by a stable hash)."""

from __future__ import annotations

import random

from env_server.sim.vfs import HOME
from env_server.tasks.base import pick

FOLDERS = (
    "Projects", "Reports", "Invoices", "Archive", "Drafts", "Recipes", "Taxes", "Travel", "Photos",
    "Backups", "Contracts", "Lectures", "Receipts", "Scripts", "Slides", "Designs", "Budget", "Clients",
    "Research", "Letters", "Notes", "Videos", "Games", "Homework", "Meetings", "Plans", "Samples",
    "Templates", "Exports", "Logs", "Personal", "Work", "Old", "Inbox", "Shared", "Music_Mix",
    "Summer", "Winter", "Garden", "Fitness",
)
STEMS = (
    "notes", "todo", "report", "letter", "summary", "ideas", "meeting", "plan", "draft", "agenda",
    "budget", "journal", "list", "memo", "outline", "recipe", "schedule", "thesis", "readme", "log",
    "minutes", "proposal", "review", "story", "poem", "checklist", "invoice", "contacts", "goals",
    "diary", "lyrics", "changes", "errors", "faq", "guide", "quotes", "tasks", "travel", "wishlist",
    "workout",
)
TEXT_EXTS = (".txt", ".md")
WORDS = (
    "apple", "river", "orange", "mountain", "coffee", "window", "garden", "silver", "planet", "rocket",
    "forest", "yellow", "purple", "castle", "button", "pencil", "harbor", "meadow", "violet", "thunder",
    "winter", "summer", "bridge", "candle", "dragon", "falcon", "guitar", "island", "jungle", "lemon",
    "marble", "nectar", "ocean", "pepper", "quartz", "rabbit", "saddle", "tomato", "velvet", "walnut",
)
PEOPLE = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoe",
)
PLACES = ("Documents", "Downloads", "Pictures", "Music", "Desktop")


def place(rng: random.Random) -> str:
    """A standard folder of the home directory."""
    return f"{HOME}/{rng.choice(PLACES)}"


def text_files(rng: random.Random, split: str, k: int = 1) -> list[str]:
    """``k`` distinct text-file names of ``split``."""
    return [s + rng.choice(TEXT_EXTS) for s in pick(rng, STEMS, split, k)]
