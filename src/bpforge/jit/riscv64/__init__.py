"""The riscv64 backend: RV64IMA(+Zbb/Zba) encodings (encode), instruction selection (select)."""
