"""``paper/main.tex``: a standalone article that inputs the generated tables and figures.

The paper has one section per part of the study, always in the same order (``PARTS``). A part
the configuration did not run, or whose tables and figures were not produced, still gets its
section, saying so, so the document compiles for every configuration. Tables are ``\\input``
from ``tables/...`` and figures ``\\includegraphics``-ed from ``../figures/...`` (paths relative
to the paper's folder). Nothing here runs LaTeX unless asked (``compile_pdf``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mmcal.atomic import write_text_atomically
from mmcal.paper.tables import latex_escape

PAPER_TITLE = "mmcal: calibration of multimodal LLMs --- regenerated study"
NOT_RUN = "Not run in this configuration."

# (key, section title, what the part measures: used when a section brings no text of its own)
PARTS = (
    (
        "main",
        "Main results",
        "Accuracy and calibration of each model on multiple-choice visual questions, with "
        "reliability diagrams, confidence histograms and risk-coverage curves.",
    ),
    (
        "visual_ft",
        "Visual fine-tuning",
        "The same model before (feature alignment only) and after visual instruction tuning, "
        "compared on the same items.",
    ),
    (
        "base_vs_mllm",
        "Base LLM vs MLLM",
        "The base language model and the multimodal model built on it, on the same text-only questions.",
    ),
    (
        "text_vs_image",
        "Text vs image",
        "The same items asked with the image, without it, with a text description instead, and with "
        "both; how accuracy, confidence and entropy move when text and image agree or conflict.",
    ),
    (
        "option_order",
        "Option order",
        "Letter-position bias: accuracy and confidence by the gold option's position when the options "
        "are rotated, and the permutation-averaged prediction.",
    ),
    (
        "idk",
        "IDK",
        "Questions the model cannot know, with an explicit ``I don't know'' option: how often models "
        "admit it, and how the prompt wording changes that.",
    ),
    (
        "recalibration",
        "Recalibration",
        "Post-hoc recalibration fitted on the calibration split and evaluated on the test split.",
    ),
    (
        "prompt_search",
        "Prompt search",
        "Iterative prompt optimisation: paraphrased answer prompts scored by ECE within accuracy "
        "bands, the best few surviving each round.",
    ),
    (
        "protocol",
        "Reference protocol",
        "The same model and items under the reference study's released protocol (raw prompt, greedy "
        "decoding, items without a letter dropped or counted wrong) beside ours (chat template, the "
        "letters' probabilities after the answer prefix).",
    ),
    ("appendix", "Additional results", "Further tables and figures, and the prompts the search found."),
)


def _part_key(section: dict) -> str | None:
    """The standard part a section belongs to: its ``key``, or its title matched to a part."""
    if section.get("key"):
        return str(section["key"])
    title = str(section.get("title", "")).strip().lower()
    for key, part_title, _ in PARTS:
        if title in (key, part_title.lower()):
            return key
    return None


def _figure_spec(figure) -> dict:
    if isinstance(figure, (str, Path)):
        return {"path": str(figure), "caption": ""}
    if isinstance(figure, (tuple, list)):
        return {"path": str(figure[0]), "caption": figure[1] if len(figure) > 1 else ""}
    return dict(figure, path=str(figure["path"]))


def _text(value: str, raw: bool) -> str:
    return str(value) if raw else latex_escape(value)


def _label(prefix: str, path: str) -> str:
    return f"{prefix}:" + re.sub(r"[^A-Za-z0-9-]+", "-", Path(path).stem).strip("-")


def _exists(base_dir: Path | None, rel: str) -> bool:
    return base_dir is None or (base_dir / rel).exists()


def _include_graphics(fig: dict) -> str:
    """``\\includegraphics`` at the figure's natural size (its fonts were sized for the page),
    shrunk to the line width only if wider; or at ``width`` x the line width when given."""
    if fig.get("width") is not None:
        return rf"\includegraphics[width={float(fig['width']):g}\linewidth]{{{fig['path']}}}"
    return (
        r"\ifdefined\mmcalfigbox\else\newsavebox{\mmcalfigbox}\fi"
        rf"\sbox{{\mmcalfigbox}}{{\includegraphics{{{fig['path']}}}}}"
        r"\ifdim\wd\mmcalfigbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\mmcalfigbox}}"
        r"\else\usebox{\mmcalfigbox}\fi"
    )


def render_section(section: dict, default_title: str, default_text: str = "", base_dir: Path | None = None) -> str:
    """One ``\\section``: text, then ``\\input`` of each table, then a figure float per figure, all
    kept between the section's heading and the next section (``\\suppressfloats``, ``\\FloatBarrier``).
    With ``base_dir``, tables and figures whose files are missing are left out (and said so);
    a part with nothing to show says it was not run in this configuration."""
    raw = bool(section.get("raw", False))
    lines = [rf"\section{{{_text(section.get('title') or default_title, raw)}}}"]
    text = section.get("text") or default_text
    if text:
        lines += [_text(text, raw), ""]
    tables = [str(t) for t in section.get("tables", []) or []]
    figures = [_figure_spec(f) for f in section.get("figures", []) or []]
    present_tables = [t for t in tables if _exists(base_dir, t)]
    present_figures = [f for f in figures if _exists(base_dir, f["path"])]
    missing = [p for p in tables if p not in present_tables] + [f["path"] for f in figures if f not in present_figures]
    # Not run: the part was not given, asked for inputs none of which exist, or says run=False.
    given = bool(section)
    not_run = (
        section.get("run") is False
        or not given
        or ((tables or figures) and not (present_tables or present_figures))
        or not (tables or figures or section.get("text"))
    )
    if not_run:
        lines.append(r"\emph{" + NOT_RUN + "}")
    if missing:
        lines.append(
            r"\emph{Not produced in this configuration: "
            + ", ".join(r"\texttt{" + latex_escape(Path(p).name) + "}" for p in missing)
            + ".}"
        )
    lines.append("")
    if present_tables or present_figures:
        lines.insert(1, r"\suppressfloats[t]")  # no float of this part above its heading
    for table in present_tables:
        lines.append(rf"\input{{{table}}}")
    for fig in present_figures:
        lines += [r"\begin{figure}[htbp]", r"\centering", _include_graphics(fig)]
        if fig.get("caption"):
            lines.append(rf"\caption{{{_text(fig['caption'], bool(fig.get('raw', raw)))}}}")
        lines += [rf"\label{{{fig.get('label') or _label('fig', fig['path'])}}}", r"\end{figure}"]
    if present_tables or present_figures:
        lines.append(r"\FloatBarrier")  # every float of this part is out before the next part starts
    return "\n".join(lines) + "\n"


def provenance_paragraph(commit: str | None, config_hash: str | None, date: str | None) -> str:
    commit = commit or "unknown (not a git checkout)"
    return (
        r"\paragraph{Provenance.} Every number, table and figure of this document was regenerated "
        r"by the mmcal workflow from cached model records, from git commit "
        rf"\texttt{{{latex_escape(commit)}}} with configuration hash "
        rf"\texttt{{{latex_escape(config_hash or 'unknown')}}}, on {latex_escape(date or 'an unknown date')}. "
        r"Intervals are 95\,\% cluster-bootstrap percentile intervals unless a table says otherwise." + "\n"
    )


def render_main_tex(
    sections: Sequence[dict],
    *,
    commit: str | None,
    config_hash: str | None,
    date: str | None,
    title: str = PAPER_TITLE,
    author: str = "The mmcal workflow",
    base_dir: Path | None = None,
) -> str:
    """The whole document. Sections are matched to ``PARTS`` by ``key`` or title; missing parts
    get a "not run" section; sections of no standard part go before the appendix."""
    by_part: dict[str, dict] = {}
    extra: list[dict] = []
    for section in sections:
        key = _part_key(section)
        if key is not None and key not in by_part:
            by_part[key] = section
        else:
            extra.append(section)
    body = []
    for key, part_title, intro in PARTS:
        if key == "appendix":
            body += [render_section(s, s.get("title", "Additional results"), base_dir=base_dir) for s in extra]
            body.append(r"\appendix" + "\n")
        body.append(render_section(by_part.get(key, {}), part_title, intro, base_dir))
    preamble = "\n".join(
        [
            r"\documentclass[10pt]{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage[utf8]{inputenc}",
            r"\usepackage{lmodern}",
            r"\usepackage[margin=1in]{geometry}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            # placeins: floats stay inside their section (no page break); without it, a page break does.
            r"\IfFileExists{placeins.sty}{\usepackage{placeins}}{\newcommand{\FloatBarrier}{\clearpage}}",
            "",
            rf"\title{{{latex_escape(title)}}}",
            rf"\author{{{latex_escape(author)}}}",
            rf"\date{{{latex_escape(date or '')}}}",
            "",
            r"\begin{document}",
            r"\maketitle",
            "",
            provenance_paragraph(commit, config_hash, date),
        ]
    )
    return preamble + "\n" + "\n".join(body) + "\n" + r"\end{document}" + "\n"


def write_main_tex(
    path,
    sections: Sequence[dict],
    *,
    commit: str | None = None,
    config_hash: str | None = None,
    date: str | None = None,
    title: str = PAPER_TITLE,
    check_files: bool = True,
) -> Path:
    """Write ``main.tex`` at ``path``. ``sections``: dicts with ``title`` (or ``key``, one of
    ``PARTS``), ``text``, ``tables`` (paths relative to the paper folder, e.g.
    ``tables/main.tex``), ``figures`` (``{"path": "../figures/x.pdf", "caption": ...}`` with an
    optional ``width`` as a fraction of the line width, a ``(path, caption)`` pair, or a path)
    and ``raw`` (text is LaTeX, do not escape). With
    ``check_files``, inputs that do not exist next to ``path`` are left out and reported in
    their section instead of breaking the compile."""
    path = Path(path)
    base_dir = path.parent if check_files else None
    tex = render_main_tex(sections, commit=commit, config_hash=config_hash, date=date, title=title, base_dir=base_dir)
    problems = latex_problems(tex)
    if problems:
        raise ValueError("generated main.tex is not balanced: " + "; ".join(problems))
    return write_text_atomically(path, tex, "paper")


_COMMENT = re.compile(r"(?<!\\)%.*")
_ENV = re.compile(r"\\(begin|end)\{([^}]*)\}")


def latex_problems(tex: str) -> list[str]:
    """Structural problems of a LaTeX source: unbalanced braces (escaped ``\\{ \\}`` and
    comments ignored) and ``\\begin``/``\\end`` that do not pair up. Empty when balanced."""
    problems: list[str] = []
    depth = 0
    envs: list[tuple[str, int]] = []
    for lineno, line in enumerate(tex.splitlines(), start=1):
        line = _COMMENT.sub("", line.replace(r"\\", "  "))  # a "\\" line break must not escape "%" or "{"
        stripped = line.replace(r"\{", "  ").replace(r"\}", "  ")
        for ch in stripped:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth < 0:
                    problems.append(f"line {lineno}: '}}' closes nothing")
                    depth = 0
        for kind, name in _ENV.findall(line):
            if kind == "begin":
                envs.append((name, lineno))
            elif not envs:
                problems.append(f"line {lineno}: \\end{{{name}}} without \\begin")
            elif envs[-1][0] != name:
                problems.append(f"line {lineno}: \\end{{{name}}} closes \\begin{{{envs[-1][0]}}} of line {envs[-1][1]}")
                envs.pop()
            else:
                envs.pop()
    if depth:
        problems.append(f"{depth} unclosed '{{'")
    problems += [f"line {line}: \\begin{{{name}}} never ended" for name, line in envs]
    return problems


def compile_pdf(tex_path, runs: int = 2, timeout: int = 300) -> Path | None:
    """Run ``pdflatex`` (twice, for references) next to ``tex_path``; None when it is not
    installed. Raises RuntimeError with the end of the log when LaTeX fails."""
    exe = shutil.which("pdflatex")
    if exe is None:
        return None
    tex_path = Path(tex_path).resolve()
    for _ in range(runs):
        proc = subprocess.run(
            [exe, "-interaction=nonstopmode", "-halt-on-error", tex_path.name],
            cwd=tex_path.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pdflatex failed on {tex_path}:\n{proc.stdout[-3000:]}")
    return tex_path.with_suffix(".pdf")
