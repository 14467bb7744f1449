"""Compare the vision-language path of the authors' MiniCPM-o 2.6 code with their MiniCPM-V 2.6 code.

    python compare_o_code.py V26_CODE_DIR O26_CODE_DIR

V26_CODE_DIR: the MiniCPM-V 2.6 files run by run_reference.py. O26_CODE_DIR: MiniCPM-o 2.6's
modeling_minicpmo.py and image_processing_minicpmv.py (never committed here). Prints, function by
function, whether the code is the same once formatting, docstrings and timing prints are set
aside, and the differences where it is not. (Written before the -o code could be run; run_reference_o.py now runs it.)
"""

import ast
import difflib
import sys
from pathlib import Path


def functions(path: Path, class_name: str) -> dict[str, list[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef):
                    fn.body = [
                        b for b in fn.body
                        if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))
                        and not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Call)
                                 and getattr(b.value.func, "id", "") in ("print", "print_timestamp"))
                    ]
                    out[fn.name] = ast.unparse(fn).splitlines()
    return out


def compare(a: dict, b: dict, names) -> None:
    for name in names:
        if name not in a or name not in b:
            print(f"{name}: missing")
            continue
        if a[name] == b[name]:
            print(f"{name}: same")
            continue
        print(f"{name}: differs")
        print("\n".join(difflib.unified_diff(a[name], b[name], lineterm="", n=0)))


def main(v26: Path, o26: Path) -> None:
    compare(functions(v26 / "image_processing_minicpmv.py", "MiniCPMVImageProcessor"),
            functions(o26 / "image_processing_minicpmv.py", "MiniCPMVImageProcessor"),
            ["ensure_divide", "find_best_resize", "get_refine_size", "split_to_patches", "slice_image",
             "get_grid_placeholder", "get_image_id_placeholder", "get_sliced_images", "get_sliced_grid",
             "get_slice_image_placeholder", "reshape_by_patch"])
    compare(functions(v26 / "modeling_minicpmv.py", "MiniCPMV"), functions(o26 / "modeling_minicpmo.py", "MiniCPMO"),
            ["init_vision_module", "init_resampler", "get_vllm_embedding"])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
