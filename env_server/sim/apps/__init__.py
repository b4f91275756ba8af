"""The apps of the simulated desktop, in taskbar order."""

from env_server.sim.apps.editor import EditorApp
from env_server.sim.apps.files import FilesApp
from env_server.sim.apps.mail import MailApp
from env_server.sim.apps.settings import SettingsApp
from env_server.sim.apps.sheet import SheetApp
from env_server.sim.apps.terminal import TerminalApp

APP_CLASSES = (FilesApp, EditorApp, SheetApp, TerminalApp, SettingsApp, MailApp)

__all__ = ["APP_CLASSES"]
