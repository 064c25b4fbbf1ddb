"""Writes a GGUF file holding only the metadata (tokenizer included) of another GGUF file, no tensors.

`make-model` takes SmolLM2's tokenizer and vocabulary from a GGUF file and reads nothing else of it;
this 2-4 MB copy travels to the device machine where the 98 MB model would not fit.
Usage: python tokenizer_gguf.py SOURCE.gguf OUT.gguf (needs `pip install gguf numpy`).
"""

import sys

import gguf


def main(source: str, out: str) -> None:
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
