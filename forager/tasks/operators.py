"""AST mutations of one function: CWM's bug set, each a minimal text edit of the original source.

A mutation is found on the AST but applied as a splice of the original text (the node's exact
span), so the diff touches one statement or expression and keeps comments, quoting and layout
everywhere else: the patch looks like a bug someone typed, not a reformatted file.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator

from forager.tasks.mutations import Candidate, functions

OPERATORS = (
    "remove_body",
    "remove_statement",
    "remove_arg",
    "reorder_args",
    "swap_vars",
    "drop_import",
    "drop_return",
    "replace_operator",
    "flip_comparison",
    "change_constant",
    "remove_conditional",
)

_BINOP_SWAP: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}
_CMP_FLIP: dict[type, type] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}


def mutate_function(path: str, source: str, qualname: str) -> list[Candidate]:
    """All single mutations of one function in one file; each candidate parses and changes the AST."""
    tree = ast.parse(source)
    found = [fn for name, fn in functions(tree) if name == qualname]
    if not found:
        return []
    fn = found[0]
    editor = Editor(path, source, qualname, tree, fn)
    for op in OPERATORS:
        getattr(editor, op)(fn)
    return editor.results


# ---------------------------------------------------------------- the operators


class Editor:
    """Finds one function's mutations; each edit is checked by parsing the file and comparing ASTs.

    An edit inside the function leaves the rest of the module's AST as it was, so the comparisons
    dump only the function (found again in the new tree by its path from the module): dumping the
    whole module three times a candidate made generation the slowest part of a candidate on six.py.
    """

    def __init__(self, path: str, source: str, function: str, tree: ast.Module, fn: ast.AST):
        self.path, self.source, self.function, self.tree, self.fn = path, source, function, tree, fn
        self.lines = source.splitlines(keepends=True)
        self.line_starts = [0]
        for line in self.lines:
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.fn_dump = ast.dump(fn)
        self.fn_ids = {id(n) for n in ast.walk(fn)}
        self._module_dump: str | None = None
        self.results: list[Candidate] = []
        self.seen: set[str] = set()
        self.parents: dict[int, tuple[ast.AST, str, int | None]] = {}
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if isinstance(value, ast.AST):
                    self.parents[id(value)] = (parent, field, None)
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if isinstance(item, ast.AST):
                            self.parents[id(item)] = (parent, field, i)
        self.fn_path: list[tuple[str, int | None]] = []  # (field, index) steps from the module down to fn
        node = fn
        while id(node) in self.parents:
            parent, field, index = self.parents[id(node)]
            self.fn_path.insert(0, (field, index))
            node = parent

    def _fn_in(self, tree: ast.Module) -> ast.AST | None:
        node: object = tree
        for field, index in self.fn_path:
            node = getattr(node, field, None)
            if index is not None:
                node = node[index] if isinstance(node, list) and index < len(node) else None
            if node is None:
                return None
        return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None

    def _changed(self, node: ast.AST, new_tree: ast.Module) -> bool:
        """Whether new_tree differs from the original where node lives (the function, or the module)."""
        if id(node) in self.fn_ids:
            new_fn = self._fn_in(new_tree)
            return new_fn is not None and ast.dump(new_fn) != self.fn_dump
        if self._module_dump is None:  # a module-level edit (drop_import): compare everything
            self._module_dump = ast.dump(self.tree)
        return ast.dump(new_tree) != self._module_dump

    # -- text splicing

    def _offset(self, lineno: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        line = self.lines[lineno - 1]
        return self.line_starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    def _replace_span(self, node: ast.AST, text: str) -> str:
        start = self._offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self._offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return self.source[:start] + text + self.source[end:]

    def _stmt_lines(self, stmt: ast.stmt) -> tuple[int, int] | None:
        """0-based [first, last] lines if the statement owns its lines alone (no `;`, no shared line)."""
        first, last = stmt.lineno - 1, stmt.end_lineno - 1  # type: ignore[operator]
        if getattr(stmt, "decorator_list", None):
            first = min(d.lineno for d in stmt.decorator_list) - 1  # type: ignore[attr-defined]
        head = self.lines[first][: stmt.col_offset] if first == stmt.lineno - 1 else ""
        tail = self.lines[last].encode()[stmt.end_col_offset :].decode(errors="ignore")  # type: ignore[index]
        if head.strip() or tail.strip() and not tail.strip().startswith("#"):
            return None
        return first, last

    def _indent(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip())]

    def _replace_lines(self, first: int, last: int, new: list[str]) -> str:
        return "".join(self.lines[:first] + new + self.lines[last + 1 :])

    def _remove_stmt(self, stmt: ast.stmt, siblings: list[ast.stmt]) -> str | None:
        span = self._stmt_lines(stmt)
        if span is None:
            return None
        if len(siblings) == 1:
            return self._replace_lines(*span, [f"{self._indent(stmt.lineno)}pass\n"])
        return self._replace_lines(*span, [])

    def _add(self, node: ast.AST, operator: str, description: str, new_source: str | None,
             new_tree: ast.Module | None = None) -> None:
        if new_source is None or new_source == self.source:
            return
        if new_tree is None:
            try:
                new_tree = ast.parse(new_source)
            except SyntaxError:
                return
        if not self._changed(node, new_tree):
            return
        cand = Candidate(self.path, self.function, getattr(node, "lineno", 0), operator, description, new_source)
        key = cand.key(self.source)
        if key not in self.seen:
            self.seen.add(key)
            self.results.append(cand)

    def _expr(self, node: ast.AST, operator: str, description: str, new_node: ast.AST) -> None:
        """Splice new_node's text over node's span; keep it only if it parses to exactly the intended tree."""
        try:
            text = ast.unparse(new_node)
        except Exception:  # noqa: BLE001 - an unparsable edge case is just not a candidate
            return
        if "\n" in text:
            return
        expected = self._dump_with(node, new_node)
        if expected is None:
            return
        # bare text first; parentheses only when the context's precedence needs them
        for variant in (text, f"({text})"):
            spliced = self._replace_span(node, variant)
            try:
                new_tree = ast.parse(spliced)
            except SyntaxError:
                continue
            new_fn = self._fn_in(new_tree)
            if new_fn is not None and ast.dump(new_fn) == expected:
                self._add(node, operator, description, spliced, new_tree)
                return

    def _dump_with(self, node: ast.AST, new_node: ast.AST) -> str | None:
        """ast.dump of the function with node (inside it) replaced by new_node: what the splice must produce."""
        where = self.parents.get(id(node))
        if where is None or id(node) not in self.fn_ids:
            return None
        parent, field, index = where
        old = getattr(parent, field)
        if index is None:
            setattr(parent, field, new_node)
        else:
            old[index] = new_node
        try:
            return ast.dump(self.fn)
        finally:
            if index is None:
                setattr(parent, field, old)
            else:
                old[index] = node

    @staticmethod
    def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
        """Nodes of the function body, not of nested functions/classes (those are their own targets)."""
        stack = list(getattr(fn, "body", []))
        while stack:
            node = stack.pop(0)
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                    stack.append(child)

    def _blocks(self, fn: ast.AST) -> Iterator[list[ast.stmt]]:
        """Every statement list inside the function (bodies of if/for/while/with/try)."""
        yield fn.body  # type: ignore[attr-defined]
        for node in self._own_nodes(fn):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    yield block
            for handler in getattr(node, "handlers", []) or []:
                yield handler.body

    # -- operators (CWM's set first, then the extras the issue names)

    def remove_body(self, fn: ast.FunctionDef) -> None:
        body = [s for s in fn.body if not _is_docstring(s)]
        if not body or (len(body) == 1 and isinstance(body[0], ast.Pass)):
            return
        spans = [self._stmt_lines(s) for s in body]
        if any(s is None for s in spans):
            return
        first, last = spans[0][0], spans[-1][1]  # type: ignore[index]
        self._add(fn, "remove_body", "replaced the whole body with pass",
                  self._replace_lines(first, last, [f"{self._indent(body[0].lineno)}pass\n"]))

    def remove_statement(self, fn: ast.FunctionDef) -> None:
        for block in self._blocks(fn):
            for stmt in block:
                if _is_docstring(stmt) or isinstance(stmt, (ast.Pass, ast.Return, ast.Import, ast.ImportFrom)):
                    continue  # returns and imports have their own operators
                if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.For, ast.While,
                                     ast.With, ast.Try, ast.Raise, ast.Delete, ast.Assert)):
                    self._add(stmt, "remove_statement", f"removed a {type(stmt).__name__} statement",
                              self._remove_stmt(stmt, block))

    def remove_arg(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            if not isinstance(node, ast.Call):
                continue
            for i in range(len(node.args)):
                if isinstance(node.args[i], ast.Starred):
                    continue
                new = copy.deepcopy(node)
                del new.args[i]
                self._expr(node, "remove_arg", f"removed positional argument {i + 1} of a call", new)
            for i, kw in enumerate(node.keywords):
                if kw.arg is None:
                    continue
                new = copy.deepcopy(node)
                del new.keywords[i]
                self._expr(node, "remove_arg", f"removed keyword argument {kw.arg!r} of a call", new)

    def reorder_args(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            if isinstance(node, ast.Call) and len(node.args) >= 2:
                for i in range(len(node.args) - 1):
                    a, b = node.args[i], node.args[i + 1]
                    if isinstance(a, ast.Starred) or isinstance(b, ast.Starred) or ast.dump(a) == ast.dump(b):
                        continue
                    new = copy.deepcopy(node)
                    new.args[i], new.args[i + 1] = new.args[i + 1], new.args[i]
                    self._expr(node, "reorder_args", f"swapped arguments {i + 1} and {i + 2} of a call", new)

    def swap_vars(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            pair: tuple[str, str] | None = None
            if isinstance(node, ast.BinOp) and _names(node.left, node.right):
                pair = ("left", "right")
            elif isinstance(node, ast.Compare) and len(node.comparators) == 1 and _names(node.left, node.comparators[0]):
                new = copy.deepcopy(node)
                new.left, new.comparators[0] = new.comparators[0], new.left
                self._expr(node, "swap_vars", "swapped the two variables of a comparison", new)
                continue
            if pair:
                new = copy.deepcopy(node)
                new.left, new.right = new.right, new.left
                self._expr(node, "swap_vars", "swapped the two variables of a binary operation", new)

    def drop_import(self, fn: ast.FunctionDef) -> None:
        used = {n.id for n in self._own_nodes(fn) if isinstance(n, ast.Name)}
        # local imports inside the function, then module-level imports the function relies on
        for block in self._blocks(fn):
            for stmt in block:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    self._add(stmt, "drop_import", "removed an import inside the function", self._remove_stmt(stmt, block))
        for stmt in self.tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not (
                isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"
            ):
                bound = {(a.asname or a.name).split(".")[0] for a in stmt.names}
                if bound & used:
                    self._add(stmt, "drop_import", "removed a module import the function uses",
                              self._remove_stmt(stmt, self.tree.body))

    def drop_return(self, fn: ast.FunctionDef) -> None:
        for block in self._blocks(fn):
            for stmt in block:
                if isinstance(stmt, ast.Return) and stmt.value is not None:
                    self._add(stmt, "drop_return", "removed a return statement", self._remove_stmt(stmt, block))

    def replace_operator(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
                new = copy.deepcopy(node)
                new.op = _BINOP_SWAP[type(node.op)]()
                self._expr(node, "replace_operator", f"replaced {type(node.op).__name__} with {type(new.op).__name__}", new)
            elif isinstance(node, ast.BoolOp):
                new = copy.deepcopy(node)
                new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
                self._expr(node, "replace_operator", "swapped and/or", new)
            elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAP:
                new = copy.deepcopy(node)
                new.op = _BINOP_SWAP[type(node.op)]()
                span = self._stmt_lines(node)
                if span and node.lineno == node.end_lineno:
                    self._add(node, "replace_operator", "replaced an augmented assignment's operator",
                              self._replace_span(node, ast.unparse(new)))

    def flip_comparison(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            if isinstance(node, ast.Compare):
                for i, op in enumerate(node.ops):
                    if type(op) in _CMP_FLIP:
                        new = copy.deepcopy(node)
                        new.ops[i] = _CMP_FLIP[type(op)]()
                        self._expr(node, "flip_comparison", f"flipped {type(op).__name__}", new)
            elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)) and not isinstance(node.test, ast.Compare):
                test = node.test
                new_test = test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else ast.UnaryOp(ast.Not(), copy.deepcopy(test))
                self._expr(test, "flip_comparison", "negated a condition", new_test)

    def change_constant(self, fn: ast.FunctionDef) -> None:
        for node in self._own_nodes(fn):
            if not isinstance(node, ast.Constant) or not hasattr(node, "lineno"):
                continue
            value = node.value
            if isinstance(value, bool):
                replacements = [not value]
            elif isinstance(value, int):
                replacements = [value + 1] if value == 0 else [value + 1, value - 1]
            elif isinstance(value, float):
                replacements = [value + 1.0]
            else:
                continue
            for new_value in replacements:
                self._expr(node, "change_constant", f"changed constant {value!r} to {new_value!r}", ast.Constant(new_value))

    def remove_conditional(self, fn: ast.FunctionDef) -> None:
        for block in self._blocks(fn):
            for stmt in block:
                if not isinstance(stmt, ast.If):
                    continue
                # drop the whole if (when it has no else): the guarded case is never handled
                if not stmt.orelse:
                    self._add(stmt, "remove_conditional", "removed an if block", self._remove_stmt(stmt, block))
                # keep the body unconditionally: the guard is gone
                span = self._stmt_lines(stmt)
                body_spans = [self._stmt_lines(s) for s in stmt.body]
                if span is None or any(s is None for s in body_spans) or stmt.orelse:
                    continue
                first_body = body_spans[0][0]  # type: ignore[index]
                last_body = body_spans[-1][1]  # type: ignore[index]
                outer, inner = self._indent(stmt.lineno), self._indent(stmt.body[0].lineno)
                if not inner.startswith(outer) or first_body <= span[0]:
                    continue
                cut = len(inner) - len(outer)
                body = [line[cut:] if line[:cut].strip() == "" else line.lstrip() for line in self.lines[first_body : last_body + 1]]
                self._add(stmt, "remove_conditional", "removed an if condition, keeping its body",
                          self._replace_lines(span[0], span[1], body))


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _names(a: ast.AST, b: ast.AST) -> bool:
    return isinstance(a, ast.Name) and isinstance(b, ast.Name) and a.id != b.id
