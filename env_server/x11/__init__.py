"""The ``x11`` backend: real X11 applications on a private Xvfb display per env.

See docs/x11_backend.md. Importing this package is cheap; processes start on the first ``reset``.
"""

from env_server.actions import ActionSchema, api

X11_API = (
    api("files.mkdir", ("path", "str"), doc="create a folder"),
    api("files.touch", ("path", "str"), doc="create an empty file"),
    api("files.rename", ("path", "str"), ("new_name", "str"), doc="rename in place"),
    api("files.move", ("src", "str"), ("dst", "str"), doc="move into a folder or to a new path"),
    api("files.copy", ("src", "str"), ("dst", "str"), doc="copy into a folder or to a new path"),
    api("files.delete", ("path", "str"), doc="delete a file or folder"),
    api("files.open", ("path", "str"), doc="show a folder in the file manager, or open a file in the editor"),
    api("editor.open", ("path", "str"), doc="open a text file in the editor"),
    api("editor.set_text", ("text", "str"), doc="replace the whole document"),
    api("editor.append", ("text", "str"), doc="add text at the end of the document"),
    api("editor.replace", ("old", "str"), ("new", "str"), doc="replace every occurrence"),
    api("editor.save", doc="save the document to its file"),
    api("editor.save_as", ("path", "str"), doc="save the document to a new path"),
)
X11_SCHEMA: ActionSchema = ActionSchema.build(X11_API)

__all__ = ["X11_API", "X11_SCHEMA"]
