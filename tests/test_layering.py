"""The import boundaries of the package, checked on the source with `ast` (every import statement,
including those inside functions and `if TYPE_CHECKING:` blocks; relative imports are resolved to
absolute module names):

1. `vitkit.models` and `vitkit.layers` import nothing from the training side: `vitkit.train`,
   `vitkit.methods`, `vitkit.data`, `vitkit.eval`, `vitkit.inspect` or the command line
   (`vitkit.cli`), so a model builds, loads and runs without them.
2. No private name crosses a package: a module does not import `_name` (or anything from a private
   module such as `vitkit.models._base`) from another subpackage. Each folder under vitkit/ is a
   package; the top-level modules (`vitkit.hub`, `vitkit.registry`, ...) together are the package
   `vitkit`. Within one package private names are fine.
3. The command line is one package, `vitkit.cli`, on top of the library: only modules in vitkit/cli/
   build argparse parsers (`ArgumentParser(...)`, `add_parser(...)`, `add_subparsers(...)`) or define
   `cmd_*` functions, and nothing outside it imports it except `vitkit/__main__.py` (`python -m vitkit`).
   Scripts outside vitkit/ (benchmarks/, scripts/) have their own command lines.
4. The pre-training methods, evaluation and inspection (vitkit/methods, vitkit/eval, vitkit/inspect)
   use the public backbone interface (`vitkit.models.Backbone`): they read no private attribute
   `x._name` of another object.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vitkit"
LOWER = ("vitkit.models", "vitkit.layers")
TRAINING_SIDE = (
    "vitkit.train",
    "vitkit.methods",
    "vitkit.data",
    "vitkit.eval",
    "vitkit.inspect",
    "vitkit.cli",
)
CLI_ENTRY_POINTS = ("vitkit.__main__",)  # `python -m vitkit` may import the command line
PARSER_CALLS = ("ArgumentParser", "add_parser", "add_subparsers")


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """vitkit/models/vit.py -> ("vitkit.models.vit", False); vitkit/models/__init__.py -> ("vitkit.models", True)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def package_of(module: str, root: Path) -> str:
    """The package a module belongs to: "vitkit.<folder>" for modules in a folder of vitkit/, else "vitkit"."""
    parts = module.split(".")
    if len(parts) >= 2 and (root / parts[1]).is_dir():
        return ".".join(parts[:2])
    return parts[0]


def imports(path: Path, root: Path):
    """(line, imported module, imported name or None) for every import in the file, relative ones resolved."""
    module, is_package = module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield node.lineno, target, alias.name


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path = ROOT) -> list[str]:
    """Every import that breaks a rule, as "file:line: rule: what"."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module, _ = module_name(path, root)
        package = package_of(module, root)
        where = path.relative_to(root.parent)
        for line, target, name in imports(path, root):
            if not under(target, (root.name,)):
                continue  # the standard library and third-party packages
            full = f"{target}.{name}" if name and name != "*" else target  # `from pkg import submodule`
            if under(module, LOWER) and (under(target, TRAINING_SIDE) or under(full, TRAINING_SIDE)):
                found.append(
                    f"{where}:{line}: models/layers import the training side: {full} "
                    f"(vitkit.models and vitkit.layers never import {', '.join(TRAINING_SIDE)})"
                )
            if package_of(target, root) != package:
                private = [p for p in target.split(".")[1:] if is_private(p)]
                if name and is_private(name):
                    private.append(name)
                message = (
                    f"{where}:{line}: private name imported across packages: {private} from "
                    f"{target} into {module} (make it public where another package needs it)"
                )
                if private and message not in found:  # once per statement, not per imported name
                    found.append(message)
    return found


def test_import_boundaries():
    found = violations()
    assert not found, "import boundaries broken:\n" + "\n".join(found)


def test_the_check_finds_crossings(tmp_path):
    """The checker on a scratch package: it reports a lazy training import in a model file, a relative
    import of a data module from a layer, and private names from another package, with file:line."""
    pkg = tmp_path / "vitkit"
    for folder in ("models", "layers", "train", "data", "methods"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "hub.py").write_text("def _atomic_write():\n    pass\n")
    (pkg / "registry.py").write_text("from .hub import _atomic_write\n")  # same package (vitkit): fine
    (pkg / "models" / "_base.py").write_text("X = 1\n")
    (pkg / "models" / "vit.py").write_text(
        "from ._base import X\n"  # private module, same package: fine
        "from ..layers import norm\n"  # models may import layers
        "def f():\n    from ..train.engine import eval_batches\n    return eval_batches\n"
    )
    (pkg / "layers" / "norm.py").write_text("from .. import data\nimport vitkit.methods.mae\n")
    (pkg / "methods" / "mae.py").write_text("from ..models._base import X\nfrom vitkit.hub import _atomic_write\n")
    found = violations(pkg)
    assert len(found) == 5, found
    assert found[0].startswith("vitkit/layers/norm.py:1: models/layers import the training side: vitkit.data")
    assert found[1].startswith("vitkit/layers/norm.py:2: models/layers import the training side: vitkit.methods.mae")
    assert found[2].startswith("vitkit/methods/mae.py:1: private name imported across packages: ['_base']")
    assert found[3].startswith("vitkit/methods/mae.py:2: private name imported across packages: ['_atomic_write']")
    assert found[4].startswith(
        "vitkit/models/vit.py:4: models/layers import the training side: vitkit.train.engine.eval_batches"
    )


def command_line_violations(root: Path = ROOT) -> list[str]:
    """Every module outside vitkit/cli/ that builds an argparse parser, defines a `cmd_*` function or imports
    the command line, as "file:line: what"."""
    found = []
    cli = f"{root.name}.cli"
    for path in sorted(root.rglob("*.py")):
        module, _ = module_name(path, root)
        if under(module, (cli,)):
            continue
        where = path.relative_to(root.parent)
        here = []  # (line, message), sorted by line below: ast.walk goes breadth-first
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("cmd_"):
                here.append((node.lineno, f"a command function {node.name} outside vitkit/cli/"))
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called in PARSER_CALLS:
                    here.append((node.lineno, f"an argparse parser ({called}) outside vitkit/cli/"))
        if module not in CLI_ENTRY_POINTS:
            for line, target, name in imports(path, root):
                full = f"{target}.{name}" if name and name != "*" else target
                if under(target, (cli,)) or under(full, (cli,)):
                    here.append((line, f"imports the command line ({full}); the library never imports {cli}"))
        found += [f"{where}:{line}: {message}" for line, message in sorted(here)]
    return found


def test_the_command_line_lives_in_vitkit_cli():
    found = command_line_violations()
    assert not found, (
        "command-line code outside vitkit/cli/ (move the parser and cmd_* function into a module of vitkit/cli/, "
        "keep the library function where it is):\n" + "\n".join(found)
    )


def test_the_command_line_check_finds_parsers_outside_cli(tmp_path):
    """The checker on a scratch package: a parser built, a sub-parser registered, a cmd_* function and an import
    of the command line outside vitkit/cli/ are reported with file:line; the same inside vitkit/cli/, and
    `python -m vitkit`'s import of it, are not."""
    pkg = tmp_path / "vitkit"
    for folder in ("cli", "data", "train"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from .cli import main\n")  # the entry point: fine
    parser = "import argparse\ndef cmd_go(args):\n    return 0\ndef add(sub):\n    sub.add_parser('go')\n"
    (pkg / "cli" / "go.py").write_text(parser)  # inside vitkit/cli/: fine
    (pkg / "data" / "shards.py").write_text(parser)
    (pkg / "train" / "run.py").write_text("import argparse\n\nP = argparse.ArgumentParser()\nfrom ..cli import go\n")
    found = command_line_violations(pkg)
    assert found == [
        "vitkit/data/shards.py:2: a command function cmd_go outside vitkit/cli/",
        "vitkit/data/shards.py:5: an argparse parser (add_parser) outside vitkit/cli/",
        "vitkit/train/run.py:3: an argparse parser (ArgumentParser) outside vitkit/cli/",
        "vitkit/train/run.py:4: imports the command line (vitkit.cli.go); the library never imports vitkit.cli",
    ], found


# --------------------------------------------------------------------------------------------
# 4. The code on top of the models (pre-training methods, evaluation, inspection) uses the public
# backbone interface (`vitkit.models.Backbone`): it reads no private attribute `x._name` of another
# object (x is not `self`/`cls`/`super()`). Attributes of modules bound by `import m` (a library's
# own API, such as `torch._foreach_lerp_`) are the library's business and not counted.
INTERFACE_USERS = ("methods", "eval", "inspect")


def private_attribute_reads(root: Path = ROOT, folders: tuple[str, ...] = INTERFACE_USERS) -> list[str]:
    """Every `x._name` read in vitkit/<folder>/*.py where x is another object, as "file:line: ..."."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            modules = {
                (alias.asname or alias.name).split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            }
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls", *modules):
                    continue
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    continue
                where = path.relative_to(root.parent)
                found.append(
                    f"{where}:{node.lineno}: reads the private attribute {ast.unparse(node)} of another object "
                    f"(use the public backbone interface, vitkit.models.Backbone, or make it public there)"
                )
    return found


def test_methods_eval_inspect_read_no_private_attributes():
    found = private_attribute_reads()
    assert not found, "private attributes read across objects:\n" + "\n".join(found)


def test_the_private_attribute_check_finds_reads(tmp_path):
    """The checker on a scratch package: a backbone's private attribute (directly, through an
    attribute chain, or on a call's result) is reported with file:line; `self._x`, `cls._x`,
    `super()._x` and an imported module's `torch._x` are not; files outside the checked folders are not."""
    pkg = tmp_path / "vitkit"
    for folder in ("methods", "eval", "models"):
        (pkg / folder).mkdir(parents=True)
    (pkg / "methods" / "m.py").write_text(
        "import torch\n"
        "class M:\n"
        "    def f(self, backbone):\n"
        "        self._views = torch._foreach_lerp_\n"
        "        super()._g()\n"
        "        return backbone._pos_embed(self.backbone._grid)\n"
    )
    (pkg / "eval" / "e.py").write_text(
        "from torch import nn\ndef f(model):\n    return model.get()._cache, nn._private, type(model).__name__\n"
    )
    (pkg / "models" / "vit.py").write_text("def f(x):\n    return x._inner\n")
    found = private_attribute_reads(pkg)
    assert [f.split(" of another")[0] for f in found] == [
        "vitkit/methods/m.py:6: reads the private attribute backbone._pos_embed",
        "vitkit/methods/m.py:6: reads the private attribute self.backbone._grid",
        "vitkit/eval/e.py:3: reads the private attribute model.get()._cache",
        "vitkit/eval/e.py:3: reads the private attribute nn._private",
    ], found
