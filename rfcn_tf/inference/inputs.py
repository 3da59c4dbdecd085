"""Which files a tool reads as images (TF-free, so the CLIs' `--help` stays fast).

`expand_inputs` turns command-line files, folders and glob patterns into image paths;
`IMAGE_EXTENSIONS` are the names a folder contributes. Decoding is `rfcn_tf.images`'.
"""

from __future__ import annotations

import os

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_inputs(inputs) -> tuple[list[str], list[dict]]:
    """Files, folders and glob patterns -> image paths (input order, duplicates removed).

    Args:
        inputs: command-line arguments. A folder contributes its entries with an image
            extension (`IMAGE_EXTENSIONS`, case-insensitive), sorted, not recursive, dangling
            symbolic links included (reading reports them); a pattern with `*`, `?` or `[` is
            expanded with `glob` (`**` recursive), sorted; a plain path is taken as is
            (whatever its extension: reading decides).

    Returns:
        `(paths, failed)`: `failed` lists `{"file", "error"}` for missing paths, dangling
        links given by name, patterns without match and folders without images.
    """
    import glob

    paths: list[str] = []
    failed: list[dict] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and not os.path.isdir(os.path.join(item, name))
            )
            if not found:
                failed.append(
                    {
                        "file": item,
                        "error": f"folder holds no image file ({', '.join(IMAGE_EXTENSIONS)})",
                    }
                )
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        elif os.path.islink(item):
            failed.append({"file": item, "error": f"dangling symbolic link to {os.readlink(item)}"})
        elif set("*?[") & set(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if not os.path.isdir(p))
            if not found:
                failed.append({"file": item, "error": "no file matches this pattern"})
            paths.extend(found)
        else:
            failed.append({"file": item, "error": "no such file or folder"})
    return list(dict.fromkeys(paths)), failed
