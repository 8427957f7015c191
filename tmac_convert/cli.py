"""Command line: a thin typer layer over the library.

    tmac-convert SOURCE [--bits 2 --group 128 --zero-point] [--out F] [--format gguf|npz] ...
    tmac-convert SOURCE --type q4_0|q4_1|tq1_0|tq2_0|f16|f32 [--allow-lossy]   (stock llama.cpp types)
    tmac-convert inspect FILE [--json]
    tmac-convert verify FILE [--source SRC] [--json]
    tmac-convert tune SOURCE [--out kcfg.ini]
    tmac-convert kit MODEL.gguf -o DIR [--isa auto|avx2|avx512|neon] [--force]   (kernels for T-MAC's fork)

The bare form is the ``convert`` command (``tmac-convert convert SOURCE`` is the same).

Exit codes: 0 success; 1 verification failed (a converted tensor does not compute what its source
computed, a re-quantised tensor's error is above --max-error, or ``verify`` found a mismatch); 2 bad
input or usage (unreadable source, kcfg mismatch, existing output without --force, an output that
would replace a file of the source, unknown option...); 130 interrupted; 141 stdout closed early
(``... | head``), nothing reported.  Errors are one line on
stderr; set TMAC_CONVERT_TRACEBACK=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from typer.core import TyperGroup

from .errors import TmacError
from .format.encodings import output_types
from .format.runtime import DEFAULT_RUNTIME, RUNTIMES
from .kit import ISAS as KIT_ISAS
from .writers.base import output_formats

EXIT_OK, EXIT_VERIFY, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away
TRACEBACK_ENV = "TMAC_CONVERT_TRACEBACK"
EPILOG = ("Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 130 interrupted, 141 stdout closed "
          "early; 1 also when a re-quantised tensor's error is above --max-error. "
          f"Set {TRACEBACK_ENV}=1 to show tracebacks of unexpected errors.")


class _DefaultToConvert(TyperGroup):
    """A group whose first argument, when it is not a command name, starts the ``convert`` command."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["convert", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultToConvert, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG,
                  help="Convert low-bit LLM checkpoints (GPTQ, BitNet b1.58, GGUF) to T-MAC's LUT-kernel layout.")


def _version(value: bool) -> None:
    if value:
        from . import __version__
        from .native_status import summary

        typer.echo(f"tmac-convert {__version__}\n{summary()}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Show the version and exit.")) -> None:
    """Convert low-bit LLM checkpoints (GPTQ, BitNet b1.58, GGUF) to T-MAC's LUT-kernel layout."""


# The choices come from the registries: a new output format, runtime or encoding is one registered class.
OutFormat = Enum("OutFormat", {n: n for n in output_formats()}, type=str)  # type: ignore[misc]
RuntimeName = Enum("RuntimeName", {n: n for n in RUNTIMES}, type=str)  # type: ignore[misc]
KitIsa = Enum("KitIsa", {n: n for n in KIT_ISAS}, type=str)  # type: ignore[misc]
OutType = Enum("OutType", {n: n for n in output_types()}, type=str)  # type: ignore[misc]
RUNTIME_HELP = "; ".join(f"{r.name}: I1..I4 = {', '.join(str(r.type_ids[b]) for b in sorted(r.type_ids))}"
                         for r in RUNTIMES.values()) + f" (default {DEFAULT_RUNTIME})."


def _stdout_gone() -> None:
    """The reader of stdout went away (``tmac-convert inspect F | head``): point stdout at /dev/null so
    that the interpreter's final flush does not fail again, and say nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _stdout_console():
    """A rich console on stdout whose closed pipe is a :class:`BrokenPipeError` (rich's default exits with
    1, which here means "verification failed")."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Console()


def _err(message: str) -> None:
    typer.echo(f"tmac-convert: error: {message}", err=True)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every failure into one line on stderr and an exit code (see the module docstring)."""
    try:
        yield
    except typer.Exit:
        raise
    except BrokenPipeError:
        _stdout_gone()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except TmacError as e:
        _err(" ".join(str(e).split()))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted; no output was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback by default
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        first = (str(e).splitlines() or [""])[0]
        _err(f"unexpected {type(e).__name__}: {first} (set {TRACEBACK_ENV}=1 for the traceback)")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _reader_options(gptq_format: str | None, act_order: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if gptq_format is not None:
        opts["gptq_format"] = gptq_format
    if act_order is not None:
        opts["act_order"] = act_order
    return opts


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _progress_bar(enabled: bool):
    """A rich progress bar over tensors with bytes/s on stderr, or ``(None, None)`` when not on a terminal."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    prog = Progress(TextColumn("{task.description:<32}", markup=False), BarColumn(),
                    TextColumn("{task.fields[done]}/{task.fields[count]} tensors"), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    state: dict[str, Any] = {}

    def update(u) -> None:
        # the task counts output bytes, so the speed column shows bytes/s; the tensor count is a field
        if "task" not in state:
            state["task"] = prog.add_task("converting", total=u.bytes_total, done=0, count=u.total)
        prog.update(state["task"], completed=u.bytes_done, description=u.name[-32:], done=u.done)

    return prog, update


def _summary(report) -> None:
    from rich.table import Table
    from rich.text import Text

    con = _stdout_console()
    t = Table(title=Text(f"{report.source} -> {report.out}"), show_footer=True)
    t.add_column("type", footer="total")
    t.add_column("tensors", justify="right", footer=str(len(report.tensors)))
    t.add_column("source", justify="right", footer=_fmt_bytes(report.src_nbytes))
    t.add_column("output", justify="right", footer=_fmt_bytes(report.out_nbytes))
    for typ, d in sorted(report.by_type().items()):
        t.add_row(Text(str(typ)), str(d["tensors"]), _fmt_bytes(d["src_nbytes"]), _fmt_bytes(d["out_nbytes"]))
    con.print(t)
    lines = [f"compression vs float16: {report.compression:.2f}x ({_fmt_bytes(report.f16_nbytes)} -> "
             f"{_fmt_bytes(report.out_nbytes)})", *_verification_lines(report),
             f"time: {report.seconds:.2f} s ({_fmt_bytes(report.src_nbytes / max(report.seconds, 1e-9))}/s of "
             f"source, {report.threads} threads)",
             f"runtime: {report.runtime}; tiles: {report.kcfg_from}" +
             (f"; kcfg written to {report.kcfg_out} (T-MAC's runtime reads it from TMAC_KCFG_FILE; its kernels "
              "must be built for the same tiles)" if report.kcfg_out and report.format == "gguf" else
              f"; kcfg written to {report.kcfg_out}" if report.kcfg_out else "")]
    from .native_status import fallback_note

    note = fallback_note()
    for line in lines + ([note] if note else []) + [f"note: {n}" for n in report.notes]:
        con.print(line, highlight=False, markup=False)


def _verification_lines(report) -> list[str]:
    """What was proven, and — separately, never as "passed" — what was lost."""
    if not report.verified:
        out = ["verification: skipped (--no-verify)"]
    else:
        tmac = [t for t in report.tensors if t.exact_error is not None]
        stock = [t for t in report.tensors if t.exact_error is None and t.nmse is not None and t.lossy_nmse is None]
        out = []
        if tmac:
            ex = max(tmac, key=lambda t: t.exact_error / t.exact_limit)
            i8 = max(tmac, key=lambda t: t.nmse)
            out.append(f"verification: layout exact on {len(tmac)} T-MAC tensors (worst float-table error "
                       f"{ex.exact_error:.2g} of the output magnitude, float32 bound {ex.exact_limit:.2g}; {ex.name})")
            out.append(f"int8 tables (the runtime's rounding): worst NMSE {i8.nmse:.3g} ({i8.name}), "
                       f"{max(t.int8_ratio for t in tmac):.4f}x what their rounding explains; the rounding model's "
                       f"average for its bits and act group is {i8.expected_nmse:.3g}")
        if stock:
            w = max(stock, key=lambda t: t.max_abs_err)
            out.append(f"verification: {len(stock)} stock-type tensors hold the source's codes exactly (largest "
                       f"difference {w.max_abs_err:.3g}, within float16 rounding of the block constants)")
        requant = [t for t in report.tensors if t.exact_error is None and t.lossy_nmse is not None]
        if requant:
            out.append(f"verification: {len(requant)} stock-type tensors were re-quantised, not converted exactly: "
                       "decoded by gguf.quants.dequantize, their error against the source is below (lossy)")
        if not out:
            out.append("verification: no quantised tensors")
    worst = report.worst_lossy
    if worst is not None:
        out.append(f"lossy: NMSE {worst.lossy_nmse:.3g} vs source ({worst.name}; {len(report.lossy)} re-quantised "
                   f"tensors), within --max-error {report.max_error:g}")
    return out


@app.command("convert", epilog=EPILOG)
def convert_cmd(
    source: str = typer.Argument(..., help="Local folder or file, or a Hugging Face repo id (org/name)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: <name>.tmac.gguf here)."),
    format: OutFormat = typer.Option(OutFormat("gguf"), "--format", "-f", help="Output container."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Weight bits: checked against a quantised source, "
                                       "chosen for a float one."),
    group: Optional[int] = typer.Option(None, "--group", help="Group size (-1: one group per row): checked or chosen."),
    zero_point: Optional[bool] = typer.Option(None, "--zero-point/--no-zero-point",
                                              help="Zero points: checked or chosen."),
    kcfg: Optional[Path] = typer.Option(None, "--kcfg", help="T-MAC kcfg.ini giving the tiles (checked first)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A bundled kcfg preset (see `tune --list-presets`)."),
    runtime: RuntimeName = typer.Option(RuntimeName(DEFAULT_RUNTIME), "--runtime", help=RUNTIME_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Worker threads (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the kernel-level check of each tensor."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    gptq_format: Optional[str] = typer.Option(None, "--gptq-format", help="Force GPTQ zero convention: v1 or v2."),
    act_order: Optional[str] = typer.Option(None, "--act-order", help="GPTQ act-order layers: refuse or requantize."),
    act_group: Optional[int] = typer.Option(None, "--act-group", help="Kernel activation group size (-1: K)."),
    tokenizer_pre: Optional[str] = typer.Option(None, "--tokenizer-pre",
                                                help="tokenizer.ggml.pre when it cannot be recognised."),
    out_type: OutType = typer.Option(OutType("tmac"), "--type",
                                     help="Projection tensor type: tmac (T-MAC I-types, default) or a stock "
                                          "llama.cpp type, written only where it holds the source's codes exactly."),
    allow_lossy: bool = typer.Option(False, "--allow-lossy",
                                     help="With a stock --type: re-quantise what it cannot hold exactly (the error "
                                          "is reported per tensor)."),
    kit: Optional[Path] = typer.Option(None, "--kit", help="Also write the T-MAC kernel kit for the output into "
                                       "this folder (see `tmac-convert kit`); --force replaces an existing kit."),
    max_error: float = typer.Option(0.1, "--max-error", help="Largest NMSE a re-quantised tensor may have against "
                                    "the source's weights (float source, act-order requantisation, --allow-lossy); "
                                    "beyond it the conversion fails with exit 1."),
) -> None:
    """Convert SOURCE to a T-MAC GGUF (or npz) file, verifying every quantised tensor."""
    from .convert import convert

    with _errors():
        if kit is not None:
            from .kit.writer import check_target

            if format is not OutFormat.gguf or out_type is not OutType.tmac:
                raise TmacError("--kit needs a T-MAC GGUF output (--format gguf, --type tmac)", rule="usage")
            check_target(kit.absolute(), force)  # refuse before converting, not after
        prog, update = _progress_bar(sys.stderr.isatty() and not json_out)
        kwargs = dict(format=format.value, bits=bits, group_size=group, zero_point=zero_point, kcfg=kcfg,
                      preset=preset, runtime=runtime.value, threads=threads, force=force, verify=not no_verify,
                      act_group_size=act_group, tokenizer_pre=tokenizer_pre, progress=update,
                      out_type=out_type.value, allow_lossy=allow_lossy, max_error=max_error,
                      **_reader_options(gptq_format, act_order))
        if prog is not None:
            with prog:
                report = convert(source, out, **kwargs)
        else:
            report = convert(source, out, **kwargs)
        kit_report = None
        if kit is not None:
            from .kit import write_kit

            kit_report = write_kit(report.out, kit, force=force)
        if json_out:
            d = report.to_dict()
            if kit_report is not None:
                d["kit"] = _kit_dict(kit_report)
            typer.echo(json.dumps(d, indent=1))
        else:
            _summary(report)
            if kit_report is not None:
                _kit_summary(kit_report)


def _kit_dict(r) -> dict[str, Any]:
    return {"out_dir": str(r.out_dir), "isa": r.isa, "kernel_paths": r.kernel_paths, "shapes": r.shapes,
            "files": r.files, "seconds": round(r.seconds, 4)}


def _kit_summary(r) -> None:
    chosen = " (the best one the CPU has, chosen at run time)" if len(r.kernel_paths) > 1 else ""
    typer.echo(f"kit: {r.out_dir} ({r.isa} kit, kernel paths {', '.join(r.kernel_paths)}{chosen}; {len(r.shapes)} "
               f"shapes, {r.seconds:.2f} s)")
    for line in r.shapes:
        typer.echo(f"  {line}")
    typer.echo(f"  build T-MAC's llama.cpp fork with -DGGML_TMAC=ON -DTMAC_DIR={r.out_dir}/lib/cmake/t-mac "
               f"(see {r.out_dir}/README)")


@app.command("inspect", epilog=EPILOG)
def inspect_cmd(
    file: Path = typer.Argument(..., help="A GGUF file or a tmac-convert npz."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    full: bool = typer.Option(False, "--full", help="Show metadata arrays and long strings in full."),
) -> None:
    """Show what FILE holds: tensors, types (T-MAC ids read correctly), tiles, sizes, metadata."""
    from .inspect_file import describe_file

    with _errors():
        d = describe_file(file, full_metadata=full)
        if json_out:
            typer.echo(json.dumps(d, indent=1, default=str))
            return
        from rich.table import Table
        from rich.text import Text  # file contents are shown as text, never as rich markup

        con = _stdout_console()
        rt = d.get("runtime")
        con.print(f"{d['file']}: {d['container']}, {_fmt_bytes(d['file_size'])}, architecture "
                  f"{d.get('architecture')}" + (f", runtime {rt['name']}" if rt else ""), markup=False)
        if d.get("tmac"):
            tm = d["tmac"]
            con.print("T-MAC: " + ", ".join(f"{k} {tm[k]}" for k in ("bits", "group_size", "zero_point", "one_scale",
                                                                       "act_group_size") if k in tm), markup=False)
        meta = Table(title="metadata")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in d["metadata"].items():
            if k == "tmac.kcfg" and d.get("tmac"):
                v = f"<kcfg.ini: {d['tmac']['kcfg'].count('[qgemm_lut')} sections; see --json>"
            meta.add_row(Text(str(k)), Text(str(v)))
        con.print(meta)
        t = Table(title=f"{len(d['tensors'])} tensors")
        for col in ("name", "type", "gguf pkg says", "shape", "bytes", "offset", "bm", "kfactor"):
            t.add_column(col, justify="right" if col in ("bytes", "offset", "bm", "kfactor") else "left")
        for x in d["tensors"]:
            t.add_row(*(Text(str(c)) for c in (
                x["name"], x["type"], x.get("gguf_package_type", x.get("encoding", "")),
                "x".join(map(str, x["shape"])), x.get("nbytes"), x.get("offset", ""), x.get("bm", ""),
                x.get("kfactor", ""))))
        con.print(t)
        for p in d["problems"]:
            con.print(f"problem: {p}", markup=False)


@app.command("verify", epilog=EPILOG)
def verify_cmd(
    file: Path = typer.Argument(..., help="A T-MAC GGUF or tmac-convert npz written earlier."),
    source: Optional[str] = typer.Option(None, "--source", help="The checkpoint it was converted from."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    kcfg: Optional[Path] = typer.Option(None, "--kcfg", help="kcfg.ini of a file without tmac.* keys."),
    runtime: Optional[RuntimeName] = typer.Option(None, "--runtime", help="Type-id numbering of such a file."),
    gptq_format: Optional[str] = typer.Option(None, "--gptq-format", help="Reader option for the source."),
    act_order: Optional[str] = typer.Option(None, "--act-order", help="Reader option for the source."),
    max_error: float = typer.Option(0.1, "--max-error", help="Largest NMSE a re-quantised stock tensor may have "
                                    "against --source."),
) -> None:
    """Re-check FILE: T-MAC GGUF or npz (structure, kcfg, the layout proof and int8 check per tensor; with
    --source, byte equality) or a stock-type GGUF (structure and decoding; with --source, the weights
    against the source's, re-quantised tensors reported as lossy). Exit 1 on any mismatch."""
    from .verify_file import verify_file

    with _errors():
        fopts: dict[str, Any] = {}
        if kcfg is not None:
            fopts["kcfg"] = kcfg
        if runtime is not None:
            fopts["runtime"] = runtime.value
        res = verify_file(file, source, reader_options=_reader_options(gptq_format, act_order), file_options=fopts,
                          max_error=max_error)
        if json_out:
            typer.echo(json.dumps(res.to_dict(), indent=1))
        else:
            n = len(res.tensors)
            if res.ok:
                d = res.to_dict()
                proofs = [t.proof for t in res.tensors if t.proof]
                if res.stock:
                    what = (", stock types: structure and decoding only (give --source to compare the weights)"
                            if not source else
                            f", lossy: worst NMSE {d['worst_lossy_nmse']:.3g} vs source (within --max-error "
                            f"{max_error:g}); exactly held tensors match it within float16 rounding"
                            if d["lossy"] else ", weights match the source within float16 rounding")
                else:
                    what = "" if not proofs else (
                        f", layout exact (worst {max(p['exact_error'] for p in proofs):.2g} of the output magnitude),"
                        f" worst int8 NMSE {d['worst_nmse']:.3g} = {max(p['int8_ratio'] for p in proofs):.4f}x what "
                        "table rounding explains")
                    what += ", bytes equal the conversion of the source" if source else ""
                    if d["lossy"]:
                        what += (f"; lossy: worst NMSE {d['worst_lossy_nmse']:.3g} vs source (within --max-error "
                                 f"{max_error:g})")
                typer.echo(f"{file}: OK, {n} tensors{what}")
            else:
                for f in res.failures:
                    typer.echo(f"FAIL: {f}")
                typer.echo(f"{file}: {len(res.failures)} problem(s) in {n} tensors")
        if not res.ok:
            raise typer.Exit(EXIT_VERIFY)


@app.command("tune", epilog=EPILOG)
def tune_cmd(
    source: Optional[str] = typer.Argument(None, help="Checkpoint whose quantised shapes to tune."),
    out: Path = typer.Option(Path("kcfg.ini"), "--out", "-o", help="Where to write the kcfg.ini."),
    act_group: int = typer.Option(64, "--act-group", help="Activation group size (-1: K)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads to time the kernels with."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing kcfg.ini."),
    bits: Optional[int] = typer.Option(None, "--bits", help="For a float source: the bits to tune for."),
    group: Optional[int] = typer.Option(None, "--group", help="For a float source: the group size."),
    zero_point: Optional[bool] = typer.Option(None, "--zero-point/--no-zero-point", help="For a float source."),
    gptq_format: Optional[str] = typer.Option(None, "--gptq-format", help="Reader option."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the bundled presets and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print the chosen tiles as JSON."),
) -> None:
    """Time the LUT kernels on this machine for SOURCE's shapes and write the fastest tiles as a kcfg.ini."""
    from .layouts import preset_names

    with _errors():
        if list_presets:
            typer.echo("\n".join(preset_names()))
            return
        if source is None:
            raise TmacError("give a SOURCE to tune (or --list-presets)", rule="usage")
        from .tuning import tune_source

        kc = tune_source(source, out, act_group_size=act_group, threads=threads, force=force,
                         reader_options={**_reader_options(gptq_format, None),
                                         **{k: v for k, v in (("bits", bits), ("group_size", group),
                                                              ("zero_point", zero_point)) if v is not None}})
        if json_out:
            typer.echo(json.dumps([{"section": e.section, "bm": e.bm, "kfactor": e.kfactor} for e in kc], indent=1))
        else:
            for e in kc:
                typer.echo(f"{e.section}: bm {e.bm}, kfactor {e.kfactor}")
            typer.echo(f"wrote {out}")


@app.command("kit", epilog=EPILOG)
def kit_cmd(
    model: Path = typer.Argument(..., help="A T-MAC GGUF written by tmac-convert."),
    out: Path = typer.Option(..., "--out", "-o", help="The kit folder to write."),
    isa: KitIsa = typer.Option(KitIsa.auto, "--isa", help="auto: this machine (x86: AVX2/AVX-512 chosen at run "
                               "time over portable C; AArch64: NEON); avx2, avx512: an x86 kit; neon: an ARM kit."),
    force: bool = typer.Option(False, "--force", help="Replace an existing kit folder."),
    check: bool = typer.Option(False, "--check", help="Write nothing: check that the kit in --out serves MODEL "
                               "exactly (shapes, tiles, group size, zero points); exit 1 listing what differs."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Write the kernel kit that lets T-MAC's llama.cpp fork run MODEL without TVM (a T-MAC install prefix)."""
    from .kit import check_kit, write_kit

    with _errors():
        if check:
            problems = check_kit(model, out)
            if json_out:
                typer.echo(json.dumps({"kit": str(out), "model": str(model), "problems": problems}, indent=1))
            for p in problems if not json_out else []:
                typer.echo(f"FAIL: {p}")
            if problems:
                if not json_out:
                    typer.echo(f"{out}: does not serve {model} ({len(problems)} problem(s))")
                raise typer.Exit(EXIT_VERIFY)
            if not json_out:
                typer.echo(f"{out}: serves {model}")
            return
        r = write_kit(model, out, isa=isa.value, force=force)
        if json_out:
            typer.echo(json.dumps(_kit_dict(r), indent=1))
        else:
            _kit_summary(r)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and exit with its code, never showing a traceback by default."""
    try:
        code = app(args=argv, prog_name="tmac-convert", standalone_mode=False)
    except typer.Exit as e:  # pragma: no cover - typer returns the code in non-standalone mode
        code = e.exit_code
    except BrokenPipeError:
        _stdout_gone()
        code = EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _err("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - usage errors and anything that escaped a command
        show = getattr(e, "show", None)
        if show is not None and hasattr(e, "exit_code"):
            show()
            code = e.exit_code
        else:
            if os.environ.get(TRACEBACK_ENV):
                traceback.print_exc()
            _err(f"unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            code = EXIT_BAD_INPUT
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()
        code = EXIT_BROKEN_PIPE
    sys.exit(code if isinstance(code, int) else 0)
