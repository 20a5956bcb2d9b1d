"""Where a command may write: never into (or over) one of its input folders, where its outputs would overwrite an
input or be read as new cases by the next run; and the output folder is cleared of the temporaries that a killed
run of ours left there."""
from __future__ import annotations

import os
from pathlib import Path

from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import remove_stale_temporaries


def refuse_output_in_inputs(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                            output_option: str = "-o") -> None:
    """InputError when `output` (a file or a folder) is one of the `inputs` folders (option -> folder; None = not
    given) or lies inside one of them."""
    out = Path(output).resolve()
    for option, folder in inputs.items():
        if folder is None:
            continue
        inp = Path(folder).resolve()
        if out == inp or inp in out.parents:
            where = "is" if out == inp else "lies inside"
            raise InputError(f"{output_option} {output} {where} the input folder {option} {folder}; expected an "
                             f"output outside every input folder (outputs written there would overwrite inputs or "
                             f"be read as new cases by the next run)")


def prepare_output_folder(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> int:
    """For commands that write a folder of files: refuses an output folder in an input folder, refuses a file
    where the folder should be, removes stale temporaries of ours from it and says how many; returns that count."""
    refuse_output_in_inputs(output, inputs)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} is a file; expected a folder (or a path where one can be created)")
    removed = remove_stale_temporaries(output)
    if removed:
        print(f"Removed {removed} temporary file(s) left in {output} by an interrupted run.")
    return removed
