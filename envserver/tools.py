"""The four tools: their function-calling schemas and the shell/edit/create implementations.

submit lives in grading.py. A tool error (the agent's mistake) is FileToolResponse(ok=False);
infrastructure trouble raises the typed errors of errors.py.
"""

from __future__ import annotations

import asyncio
import posixpath
import time

import docker.errors

from envserver.docker_backend import Backend
from envserver.files import ToolError, apply_edit, resolve, snippet
from envserver.models import CreateFileRequest, EditRequest, FileToolResponse, ShellRequest, ShellResponse, ToolSchema
from envserver.session import BashSession

OUTPUT_DIR = "/tmp/forager-output"

TOOLS = [
    ToolSchema(function={
        "name": "shell",
        "description": (
            "Run a command in a persistent bash shell inside the environment; the working directory and exported "
            "variables persist between calls. Returns stdout and stderr merged in order, and the exit code. "
            "Commands get no stdin, so do not run interactive programs. Long outputs are cut in the middle "
            "(the full text is saved to a file whose path is given)."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "the bash command(s) to run"},
                "timeout": {"type": "number", "description": "seconds before the command is killed (default 120)"},
            },
            "required": ["command"],
        },
    }),
    ToolSchema(function={
        "name": "edit",
        "description": (
            "Replace text in a file: `old` must occur in the file exactly once (include enough surrounding lines "
            "to make it unique) and is replaced by `new`. Returns the changed region with line numbers."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "file path, relative to the repository root or absolute"},
                "old": {"type": "string", "description": "exact text to replace, including whitespace"},
                "new": {"type": "string", "description": "replacement text"},
            },
            "required": ["path", "old", "new"],
        },
    }),
    ToolSchema(function={
        "name": "create",
        "description": "Create a new file with the given content. Fails if the file exists or its directory does not.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "file path, relative to the repository root or absolute"},
                "content": {"type": "string", "description": "the complete file content"},
            },
            "required": ["path", "content"],
        },
    }),
    ToolSchema(function={
        "name": "submit",
        "description": "Submit the current state of the repository as the final answer. Ends the episode.",
        "parameters": {"type": "object", "properties": {}},
    }),
]


async def shell(
    backend: Backend, session: BashSession, req: ShellRequest, timeout: float, cap: int, output_no: int
) -> ShellResponse:
    t0 = time.monotonic()
    result = await session.run(req.command, timeout)
    data = result.output
    truncated, full_path = False, None
    if len(data) > cap:
        truncated, full_path = True, f"{OUTPUT_DIR}/{output_no}.log"
        await asyncio.to_thread(backend.write_files, session.container_id, "/tmp", {f"forager-output/{output_no}.log": data})
        half = cap // 2
        notice = (
            f"\n\n[... output cut: {len(data)} bytes in total, {len(data) - 2 * half} bytes omitted here; "
            f"the full output is in {full_path} ...]\n\n"
        )
        text = data[:half].decode(errors="replace") + notice + data[-half:].decode(errors="replace")
    else:
        text = data.decode(errors="replace")
    if result.timed_out:
        text += (
            f"\n[command timed out after {timeout:g}s and was killed; a new shell was started in {session.cwd} "
            "(exported variables were reset)]"
        )
    elif result.session_ended:
        text += f"\n[the shell exited; a new shell was started in {session.cwd} (exported variables were reset)]"
    return ShellResponse(
        output=text, exit_code=result.exit_code, timed_out=result.timed_out, truncated=truncated,
        full_output_path=full_path, duration=time.monotonic() - t0,
    )


async def edit(backend: Backend, cid: str, workdir: str, req: EditRequest, max_bytes: int) -> FileToolResponse:
    try:
        path, st = await _existing_file(backend, cid, resolve(req.path, workdir), req.path)
        if st.size > max_bytes:  # refused from its size alone: a 4 GB sparse file is never read
            raise ToolError(f"{req.path} is {st.size} bytes, over the {max_bytes}-byte limit of edit: "
                            "change it with shell commands (sed, python) instead")
        data, info = await asyncio.to_thread(backend.read_file, cid, path)
        if b"\0" in data[:8192]:
            raise ToolError(f"{req.path} is a binary file: edit changes text files only")
        new_data, snip = apply_edit(data, req.old, req.new, req.path)
        if len(new_data) > max_bytes:
            raise ToolError(f"the edit would make {req.path} {len(new_data)} bytes, over the {max_bytes}-byte limit")
        await asyncio.to_thread(backend.write_file, cid, path, new_data, info)
    except (docker.errors.NotFound, FileNotFoundError):  # removed between our look and our read or write
        return FileToolResponse(ok=False, output=f"{req.path}: no such file")
    except ToolError as exc:
        return FileToolResponse(ok=False, output=str(exc))
    return FileToolResponse(ok=True, output=f"Edited {req.path}:\n{snip}")


async def create(backend: Backend, cid: str, workdir: str, req: CreateFileRequest, max_bytes: int) -> FileToolResponse:
    try:
        path = resolve(req.path, workdir)
        if len(req.content.encode()) > max_bytes:
            raise ToolError(f"the content is over the {max_bytes}-byte limit of create: write it in parts with shell commands")
        if await asyncio.to_thread(backend.stat, cid, path) is not None:
            raise ToolError(f"{req.path} already exists: use edit to change it")
        parent = posixpath.dirname(path)
        pst = await asyncio.to_thread(backend.stat, cid, parent)
        if pst is None:
            raise ToolError(f"directory {parent} does not exist: create it first (e.g. mkdir -p {parent})")
        if not pst.is_dir and not pst.is_symlink:
            raise ToolError(f"{parent} is not a directory")
        data = req.content.encode()
        await asyncio.to_thread(backend.write_file, cid, path, data)
    except (docker.errors.NotFound, FileNotFoundError):
        return FileToolResponse(ok=False, output=f"directory of {req.path} does not exist")
    except ToolError as exc:
        return FileToolResponse(ok=False, output=str(exc))
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return FileToolResponse(ok=True, output=f"Created {req.path} ({lines} lines):\n{snippet(data, 1, 1)}")


async def _existing_file(backend: Backend, cid: str, path: str, shown: str):
    """(the regular file `path` names, following a few symlinks as an editor would; its stat)."""
    for _ in range(8):
        st = await asyncio.to_thread(backend.stat, cid, path)
        if st is None:
            raise ToolError(f"{shown}: no such file (use create for a new file)")
        if st.is_dir:
            raise ToolError(f"{shown} is a directory")
        if not st.is_symlink:
            return path, st
        target = st.link_target or ""
        path = target if target.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    raise ToolError(f"{shown}: too many levels of symbolic links")
