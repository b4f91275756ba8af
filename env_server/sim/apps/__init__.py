"""The apps of the simulated desktop, in taskbar order."""

from env_server.sim.apps.editor import EditorApp
from env_server.sim.apps.files import FilesApp

APP_CLASSES = (FilesApp, EditorApp)

__all__ = ["APP_CLASSES"]
