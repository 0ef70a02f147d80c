#!/usr/bin/env python3
"""What can be checked of yocto/meta-aegis without BitBake (tools/yocto-check.sh runs it).

    check_layer.py [--layer DIR] [--root DIR]

- every recipe and append in the layer is matched by conf/layer.conf's BBFILES or
  BBFILES_DYNAMIC (else BitBake silently ignores it), and the layer is for scarthgap;
- every file:// in a SRC_URI exists where BitBake's FILESPATH would look for it;
- every remote SRC_URI entry has a SHA-256 checksum, and every checksum names an entry;
- the agent recipe's version is the workspace's (Cargo.toml), its LIC_FILES_CHKSUM matches the
  checkout, and the files it installs from the checkout exist (missing ones are printed as
  `pending:` lines, which tools/yocto-check.sh records as skips);
- the models and ONNX Runtime recipes pin what tools/fetch-models.sh pins: the same package
  versions, the same SHA-256 of each extracted file, the converter's same packages.

BitBake's syntax is only read as far as these checks need: assignments (=, ?=, ??=, :=, +=,
.=, =+, :append, :prepend) with line continuations, `require`/`include` of files in the layer,
and ${VAR} of variables assigned in the same recipe or conf/layer.conf.
"""

import argparse
import hashlib
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSIGN = re.compile(
    r"^(?P<var>[A-Za-z0-9_\-${}./+]+)(?P<flag>\[[^\]]+\])?(?P<ovr>(?::[A-Za-z0-9_\-${}]+)*)"
    r"\s*(?P<op>\?\?=|\?=|:=|\+=|\.=|=\+|=\.|=)\s*\"(?P<val>.*)\"\s*$",
    re.S,
)


class Recipe:
    """One .bb/.bbappend (with the files it requires from the layer): its assignments."""

    def __init__(self, path: Path, layer: "Layer"):
        self.path = path
        self.layer = layer
        stem = path.name.rsplit(".", 1)[0]
        self.bpn, _, pv = stem.partition("_")
        self.pv = pv if pv and pv != "%" else None
        self.vars: dict[str, str] = {"BPN": self.bpn, "PN": self.bpn, "THISDIR": str(path.parent)}
        if self.pv:
            self.vars["PV"] = self.pv
            self.vars["BP"] = f"{self.bpn}-{self.pv}"
        self.vars.update(layer.globals)
        self.src_uri: list[str] = []
        self.checksums: dict[str, str] = {}
        self.filesextrapaths: list[str] = []
        self.text = ""
        self._read(path)

    def expand(self, value: str) -> str:
        for _ in range(10):
            new = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: self.vars.get(m[1], m[0]), value)
            if new == value:
                break
            value = new
        return value

    def _read(self, path: Path) -> None:
        text = path.read_text()
        self.text += text
        for stmt in statements(text):
            if m := re.match(r"^(require|include)\s+(\S+)$", stmt):
                inc = (path.parent / self.expand(m[2])).resolve()
                if inc.is_file() and self.layer.root in inc.parents:
                    self._read(inc)
                continue
            m = ASSIGN.match(stmt)
            if not m:
                continue
            var, flag, ovr, op = m["var"], m["flag"], m["ovr"], m["op"]
            val = self.expand(m["val"].replace("\\\n", " "))
            if var == "SRC_URI" and flag:
                self.checksums[flag[1:-1]] = val.strip()
            elif var == "SRC_URI":
                if op in ("=", "?=", "??=", ":=") and not ovr:
                    self.src_uri = []
                self.src_uri += val.split()
            elif var == "FILESEXTRAPATHS":
                self.filesextrapaths += [p for p in val.split(":") if p.strip()]
            elif not flag and not ovr and op in ("=", ":=", "?=", "??="):
                if op in ("?=", "??=") and var in self.vars and var not in ("BPN", "PN"):
                    continue
                self.vars[var] = val.strip()

    def filespath(self) -> list[Path]:
        here = self.path.parent
        dirs = [Path(p.strip()) for p in self.filesextrapaths]
        for name in [self.vars.get("BP"), self.bpn, "files"]:
            if name:
                dirs.append(here / name)
        return dirs


class Layer:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.conf = (self.root / "conf/layer.conf").read_text()
        self.globals = {"LAYERDIR": str(self.root), "AEGIS_TOPDIR": str(self.root.parent.parent)}
        self.recipes = [
            Recipe(p, self) for p in sorted(self.root.rglob("*")) if p.suffix in (".bb", ".bbappend")
        ]

    def bbfiles_globs(self) -> list[str]:
        globs = []
        for stmt in statements(self.conf):
            m = ASSIGN.match(stmt)
            if m and m["var"] in ("BBFILES", "BBFILES_DYNAMIC"):
                for item in m["val"].replace("\\\n", " ").split():
                    item = item.split(":", 1)[1] if m["var"] == "BBFILES_DYNAMIC" else item
                    globs.append(item.replace("${LAYERDIR}", str(self.root)))
        return globs

    def conf_var(self, name: str) -> str | None:
        for stmt in statements(self.conf):
            m = ASSIGN.match(stmt)
            if m and m["var"] == name:
                return m["val"]
        return None


def statements(text: str) -> list[str]:
    """Logical lines: comments dropped, backslash continuations joined (kept as \\\n)."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and line.lstrip().startswith("#"):
            continue
        cur += line
        if line.endswith("\\"):
            cur += "\n"
            continue
        out.append(cur.strip())
        cur = ""
    if cur:
        out.append(cur.strip())
    return out


def check_layer_conf(layer: Layer) -> list[str]:
    out = []
    if (layer.conf_var("LAYERSERIES_COMPAT_meta-aegis") or "").split() != ["scarthgap"]:
        out.append("conf/layer.conf: LAYERSERIES_COMPAT_meta-aegis must be scarthgap")
    globs = layer.bbfiles_globs()
    for r in layer.recipes:
        if not any(r.path.match(g) for g in globs):
            out.append(
                f"{r.path.relative_to(layer.root)}: not matched by BBFILES/BBFILES_DYNAMIC (BitBake ignores it)"
            )
    return out


def check_src_uri(layer: Layer) -> list[str]:
    out = []
    for r in layer.recipes:
        where = r.path.relative_to(layer.root)
        names = set()
        for entry in r.src_uri:
            url, *params = entry.split(";")
            opts = dict(p.split("=", 1) for p in params if "=" in p)
            if url.startswith("file://"):
                rel = url[len("file://") :]
                cands = [Path(rel)] if rel.startswith("/") else [d / rel for d in r.filespath()]
                if not any(c.exists() for c in cands):
                    out.append(f"{where}: {url} is in none of {', '.join(str(c.parent) for c in cands)}")
            elif url.startswith("crate://"):
                names.add(opts.get("name", "-".join(url.split("/")[-2:])))
            elif url.startswith(("https://", "http://")):
                names.add(opts.get("name", "default"))
            else:
                out.append(f"{where}: unexpected SRC_URI entry {entry}")
        for name in sorted(names):
            key = "sha256sum" if name == "default" else f"{name}.sha256sum"
            if not re.fullmatch(r"[0-9a-f]{64}", r.checksums.get(key, "")):
                out.append(f"{where}: no SHA-256 for the SRC_URI entry named {name} (SRC_URI[{key}])")
        for key in sorted(r.checksums):
            name = key.rsplit(".", 1)[0] if "." in key else "default"
            if name not in names:
                out.append(f"{where}: SRC_URI[{key}] names no SRC_URI entry")
    return out


def recipe(layer: Layer, bpn: str) -> Recipe:
    found = [r for r in layer.recipes if r.bpn == bpn and r.path.suffix == ".bb"]
    if len(found) != 1:
        raise SystemExit(f"check_layer: expected one {bpn} recipe, found {len(found)}")
    return found[0]


def check_agent(layer: Layer, root: Path) -> tuple[list[str], list[str]]:
    out, pending = [], []
    r = recipe(layer, "aegis")
    version = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    if r.pv != version:
        out.append(
            f"{r.path.name}: version {r.pv}, but Cargo.toml's workspace version is {version} (rename the recipe)"
        )
    for item in r.vars.get("LIC_FILES_CHKSUM", "").split():
        url, *params = item.split(";")
        opts = dict(p.split("=", 1) for p in params)
        lines = (root / url[len("file://") :]).read_text().splitlines(keepends=True)
        begin, end = int(opts.get("beginline", 1)), int(opts.get("endline", len(lines)))
        md5 = hashlib.md5("".join(lines[begin - 1 : end]).encode()).hexdigest()
        if md5 != opts.get("md5"):
            out.append(
                f"{r.path.name}: LIC_FILES_CHKSUM {url} lines {begin}-{end} have md5 {md5}, not {opts.get('md5')}"
            )
    for rel in sorted(set(re.findall(r"\$\{S\}/([A-Za-z0-9_./-]+)", r.text))):
        if not (root / rel).exists():
            pending.append(rel)
    return out, pending


def fetch_models_pins(root: Path) -> dict:
    """What tools/fetch-models.sh pins: {'models': {name: (pkg, ver, inner, sha)}, ...}."""
    text = (root / "tools/fetch-models.sh").read_text()
    models = {}
    for name, pkg, inner, sha in re.findall(
        r'^\s*"([^|"]+)\|([^|=]+==[^|]+)\|([^|]+)\|([0-9a-f]{64})\|', text, re.M
    ):
        dist, ver = pkg.split("==")
        models[name] = (dist, ver, inner, sha)
    ort = re.search(r'"libonnxruntime\.so\.[^|]+\|onnxruntime==([^|]+)\|', text)
    arm = re.search(r"aarch64\) ORT_SHA=([0-9a-f]{64})", text)
    onnx = re.search(r"^ONNX_SHA=([0-9a-f]{64})", text, re.M)
    reqs = re.search(r"^CONVERT_REQS=\(([^)]*)\)", text, re.M)
    if not (models and ort and arm and onnx and reqs):
        raise SystemExit(
            "check_layer: tools/fetch-models.sh no longer has the pins this check reads (MODELS, ORT_SHA, ONNX_SHA, CONVERT_REQS)"
        )
    return {
        "models": models,
        "ort": (ort[1], arm[1]),
        "onnx_sha": onnx[1],
        "convert": {canon(p.split("==")[0]): p.split("==")[1] for p in reqs[1].split()},
    }


def canon(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def wheels(r: Recipe) -> dict[str, str]:
    """{distribution: version} of every wheel in the recipe's SRC_URI."""
    out = {}
    for entry in r.src_uri:
        name = entry.split(";")[0].rsplit("/", 1)[-1]
        if name.endswith(".whl"):
            dist, ver = name.split("-")[:2]
            out[canon(dist)] = ver
    return out


def check_models(layer: Layer, root: Path) -> list[str]:
    pins, out = fetch_models_pins(root), []
    m = recipe(layer, "aegis-models")
    have = wheels(m)
    want = {canon(d): v for d, v, _, _ in pins["models"].values() if not d.startswith("onnxruntime")}
    want.update(pins["convert"])
    for dist in sorted(want.keys() | have.keys()):
        if want.get(dist) != have.get(dist):
            out.append(
                f"{m.path.name}: {dist} {have.get(dist) or 'missing'}, tools/fetch-models.sh pins {want.get(dist) or 'nothing'}"
            )
    shas = {
        "selfie_segmentation.tflite": "AEGIS_SELFIE_TFLITE_SHA256",
        "nudenet-320n.onnx": "AEGIS_NUDENET_SHA256",
    }
    for name, var in shas.items():
        if name not in pins["models"]:
            out.append(f"tools/fetch-models.sh no longer fetches {name}: update {m.path.name}")
        elif m.vars.get(var) != pins["models"][name][3]:
            out.append(
                f"{m.path.name}: {var} {m.vars.get(var)}, tools/fetch-models.sh pins {pins['models'][name][3]} for {name}"
            )
    if m.vars.get("AEGIS_SELFIE_ONNX_SHA256") != pins["onnx_sha"]:
        out.append(
            f"{m.path.name}: AEGIS_SELFIE_ONNX_SHA256 {m.vars.get('AEGIS_SELFIE_ONNX_SHA256')}, tools/fetch-models.sh's ONNX_SHA is {pins['onnx_sha']}"
        )
    for name, (_, _, inner, _) in pins["models"].items():
        if not name.startswith("libonnxruntime") and inner.split("/", 1)[1] not in m.text:
            out.append(f"{m.path.name}: does not extract {inner} (tools/fetch-models.sh's {name})")
    o = recipe(layer, "aegis-onnxruntime")
    version, sha = pins["ort"]
    if o.pv != version or wheels(o).get("onnxruntime") != version:
        out.append(f"{o.path.name}: onnxruntime {o.pv}, tools/fetch-models.sh pins {version}")
    if o.vars.get("AEGIS_ORT_SHA256") != sha:
        out.append(
            f"{o.path.name}: AEGIS_ORT_SHA256 {o.vars.get('AEGIS_ORT_SHA256')}, tools/fetch-models.sh pins {sha} (aarch64)"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=Path, default=ROOT / "yocto/meta-aegis")
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="the checkout (Cargo.toml, tools/fetch-models.sh)"
    )
    args = ap.parse_args()
    layer = Layer(args.layer)
    problems = check_layer_conf(layer) + check_src_uri(layer) + check_models(layer, args.root)
    agent, pending = check_agent(layer, args.root)
    problems += agent
    for p in problems:
        print(f"check_layer: {p}", file=sys.stderr)
    for p in pending:
        print(f"pending: {p}")
    if problems:
        return 1
    print(
        f"check_layer: {len(layer.recipes)} recipes and appends: BBFILES, SRC_URI files and checksums, "
        "agent version and licence, model pins all consistent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
