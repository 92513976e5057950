"""``xrais nanobragg``: the nanoBragg command line, rendered by the xrais kernels.

The command takes nanoBragg's own options (see :mod:`xrais.simulate.nanobragg_args`) and writes
nanoBragg's files: ``-floatfile`` (raw float32), ``-intfile`` and ``-noisefile`` (SMV, uint16)
and ``-pgmfile`` (8-bit PGM), with nanoBragg's default names when not given.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from typer.core import TyperCommand

__all__ = ["register", "nanobragg", "write_outputs", "smv_header"]

_HELP = "\n\n".join([
    "Simulate an image with nanoBragg's command line: nanoBragg's options, units (mm, Å, degrees, mrad for "
    "divergence, % for dispersion, µm of water, eV), defaults and output files, rendered by the xrais kernels.",
    "Example: xrais nanobragg -cell 79.1 79.1 38.4 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 "
    "-pixel 0.172 -detpixels 256 -oversample 1 -floatfile img.bin -nonoise",
    "Like the C program (and unlike the xrais render API, which does the physical thing) the command keeps "
    "nanoBragg's quirks: the water background scales as fluence² and is divided by the number of sub-steps; "
    "Ω and polarization are taken once per pixel (first sub-pixel, first source); the default mosaic seed is "
    "12345678; -Xbeam is along the slow axis and -Ybeam along the fast axis (mm, from the first pixel's centre); "
    "with -twotheta the header's DISTANCE and beam centres use the detector normal before the swing. "
    "A spindle angle of exactly 0 is rotated like any other (nanoBragg skips the rotation).",
    "Differences: options match exactly (nanoBragg matches substrings, so that -mosaic_seed also sets -seed); "
    "unknown options and stray arguments are errors; F is never interpolated (-interpolate is refused, and a "
    "warning says when nanoBragg would have interpolated); ./Fdump.bin is neither read nor written; the SMV "
    "header's DIALS_ORIGIN line ends with ';'. The default noise seed is the time, as in nanoBragg, and is printed.",
    "xrais extras: -backend numba|cuda|auto; --nanobragg-2022 selects the pre-2023 GAUSS/TOPHAT spot shapes "
    "(as in cctbx simtbx).",
])


def smv_header(run: Any) -> dict[str, str]:
    """nanoBragg's SMV header for a resolved run (:class:`~xrais.simulate.nanobragg_args.NanoBraggRun`)."""
    import numpy as np

    from xrais.simulate.mosaic import NANOBRAGG_TO_LAB
    from xrais.simulate.smv import nanobragg_smv_header

    panel = run.detector.panels[0]
    to_nb = NANOBRAGG_TO_LAB.T  # xrais lab → nanoBragg frame
    pix0, fast, slow = (to_nb @ np.asarray(v) for v in (panel.origin_mm, panel.fast_axis, panel.slow_axis))
    normal = np.cross(fast, slow)
    close = float(pix0 @ normal)
    ratio = run.beam_normal_ratio  # nanoBragg's, from before the two-theta swing
    to_beam = close / ratio * np.array([1.0, 0.0, 0.0]) - pix0
    return nanobragg_smv_header(
        n_fast=panel.image_size[0], n_slow=panel.image_size[1], pixel_mm=panel.pixel_size_mm[0],
        distance_mm=close / ratio, wavelength_A=run.beam.wavelength_A, xbeam_mm=run.beam_mm[0],
        ybeam_mm=run.beam_mm[1], fbeam_mm=float(fast @ to_beam), sbeam_mm=float(slow @ to_beam),
        detsize_s_mm=run.detsize_mm[1], fclose_mm=-float(pix0 @ fast), sclose_mm=-float(pix0 @ slow),
        close_distance_mm=close, dials_origin_mm=(float(pix0[2]), float(pix0[1]), -float(pix0[0])),
        phi_deg=run.phi_deg, osc_deg=run.osc_deg, twotheta_deg=run.args.twotheta_deg)


def write_outputs(run: Any, image: Any) -> list[str]:
    """Write nanoBragg's output files for ``image``; one description line per file written."""
    from xrais.simulate.noise_nanobragg import nanobragg_noise
    from xrais.simulate.smv import (intfile_pixels, intfile_scale, pgm_pixels, pgm_scale, write_floatfile, write_pgm,
                                    write_smv)

    a, roi = run.args, run.render_options["roi"]
    lines = []
    write_floatfile(a.floatfile, image)
    lines.append(f"{a.floatfile}: {image.size} float32 values (photons/pixel)")
    header = smv_header(run)
    scale = intfile_scale(image, a.scale, roi)
    write_smv(a.intfile, intfile_pixels(image, scale, a.adc, roi), header)
    lines.append(f"{a.intfile}: SMV, {scale:g} counts/photon + ADC {a.adc:g}")
    if a.write_pgm:
        p_scale = pgm_scale(image, a.pgmscale, scale, roi)
        write_pgm(a.pgmfile, pgm_pixels(image, p_scale, roi), p_scale)
        lines.append(f"{a.pgmfile}: PGM, scaled by {p_scale:g}")
    if a.write_noise:
        noise, photons, overloads = nanobragg_noise(image, run.noise_seed, adc=a.adc, roi=roi)
        write_smv(a.noisefile, noise, header)
        lines.append(f"{a.noisefile}: SMV with Poisson noise, seed {run.noise_seed}: {photons:.0f} photons, "
                     f"{overloads} overloads")
    return lines


def nanobragg(ctx: typer.Context) -> None:
    from rich.markup import escape

    from xrais.cli import console, err_console
    from xrais.simulate.nanobragg_args import parse_nanobragg_args, render_nanobragg, resolve_nanobragg

    args = parse_nanobragg_args(ctx.args)
    run = resolve_nanobragg(args, now_seed=int(time.time()))
    for note in run.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    image, steps = render_nanobragg(run)
    seconds = time.perf_counter() - t0
    lines = write_outputs(run, image)
    if not args.progress:
        return
    cr, n_slow, n_fast = run.crystal, *image.shape
    peak = divmod(int(image.argmax()), n_fast)
    summary = [
        f"crystal {cr.n_cells[0]}×{cr.n_cells[1]}×{cr.n_cells[2]} cells, {cr.shape}; cell "
        + " ".join(f"{v:g}" for v in cr.cell),
        f"{len(run.sources)} sources × {cr.mosaic_domains} mosaic domains × {run.phisteps} phi steps "
        f"× {run.oversample}² sub-pixels = {steps} steps",
        f"fluence {run.fluence:g} photons/m², Kahn factor "
        + ("off (-nopolar)" if args.nopolar else f"{args.kahn:g}") + f", λ {args.lambda_A:g} Å",
        f"{n_fast}×{n_slow} pixels of {args.pixel_mm:g} mm at {args.distance_mm:g} mm; rendered in {seconds:.2f} s",
        f"max_I = {float(image.max()):g} at (slow, fast) = {peak}; sum {float(image.sum(dtype='f8')):g} photons",
        *(f"wrote {line}" for line in lines),
    ]
    for line in summary:
        console.print(escape(line), highlight=False, soft_wrap=True)


nanobragg.__doc__ = _HELP


class _NanoBraggCommand(TyperCommand):
    """``xrais nanobragg``: its help ends with the options it accepts, listed when the help is shown.

    (Listing them at start-up would import the simulator into every ``xrais`` command.)
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not getattr(self, "_options_listed", False):
            from xrais.simulate.nanobragg_args import SUPPORTED_OPTIONS

            self.help = (self.help or "") + "\n\nOptions: " + " ".join(sorted(SUPPORTED_OPTIONS, key=str.lower))
            self._options_listed = True
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    """Add ``xrais nanobragg`` to ``app``."""
    app.command(
        "nanobragg",
        cls=_NanoBraggCommand,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help=_HELP,
        add_help_option=True,
    )(nanobragg)
