"""THE table of eBPF instruction forms (RFC 9669 plus the kernel's extensions).

One `Form` is one instruction form: its opcode byte, the field values that tell it apart from other forms
with the same opcode (`fixed`), its syntax template in llvm-objdump/llvm-mc spelling and other accepted
spellings (`aliases`: the kernel verifier log, alu32 register names), its cpu version and the semantic
attributes later stages read (kind, op, width, size, signedness, fetch).

The encoding fields a form uses freely are exactly the placeholders of its templates; every other field must
be zero (or equal its `fixed` value). That single rule is what decoding enforces as "reserved fields".
Nothing outside this package switches on opcode numbers: everything reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from . import opcodes as op
from .syntax import Template

FIELDS = ("dst", "src", "off", "imm", "imm_hi")


@dataclass(frozen=True)
class Form:
    name: str
    opcode: int
    syntax: str
    kind: str  # alu mov neg end jmp ja may_goto call callx exit lddw ld_abs ld_ind ldx st stx atomic as_cast
    fixed: tuple[tuple[str, int], ...] = ()
    aliases: tuple[str, ...] = ()
    cpu: int = 1
    op: str = ""  # alu: add sub ...; jmp: jeq ...; end: le be bswap; atomic: add or and xor xchg cmpxchg ...
    width: int = 64  # operation width of alu/jmp/atomic forms; 16/32/64 for byte swaps
    size: int = 0  # bytes accessed by memory forms
    source: str = ""  # "reg" or "imm" for alu/jmp forms
    signed: bool = False  # sdiv/smod, movsx, sign-extending loads
    fetch: bool = False  # atomics that return the old value
    llvm: bool = True  # llvm-mc-19 accepts the primary spelling (used by the differential test)
    kernel: bool = True  # the Linux kernel accepts it (callx exists only in llvm and userspace runtimes)
    templates: tuple[Template, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(Template(s) for s in (self.syntax, *self.aliases)))

    @cached_property
    def operands(self) -> frozenset[str]:
        """Encoding fields this form takes freely (from its primary template)."""
        return self.templates[0].fields

    @cached_property
    def fixed_fields(self) -> dict[str, int]:
        return dict(self.fixed)

    @property
    def cls(self) -> int:
        return self.opcode & 0x07

    @property
    def slots(self) -> int:
        return 2 if self.kind == "lddw" else 1

    @property
    def is_branch(self) -> bool:
        """Transfers control to pc + 1 + offset within the function (conditional or not)."""
        return self.kind in ("jmp", "ja", "may_goto")

    @property
    def target_field(self) -> str | None:
        """The field holding a pc-relative offset, if the form has one."""
        for tpl in self.templates[:1]:
            for ph in tpl.placeholders:
                if ph.is_target:
                    return ph.field
        return None


def _build() -> list[Form]:
    forms: list[Form] = []
    add = forms.append

    # ---- ALU and ALU64 -------------------------------------------------------------------------------
    binary = {
        "add": "+=", "sub": "-=", "mul": "*=", "div": "/=", "or": "|=", "and": "&=", "lsh": "<<=",
        "rsh": ">>=", "mod": "%=", "xor": "^=", "arsh": "s>>=", "mov": "=",
    }
    for width, cls, r in ((64, op.ALU64, "r"), (32, op.ALU, "w")):
        for name, sym in binary.items():
            base = cls | op.ALU_OPS[name]
            for source, bit, operand in (("imm", op.K, "{imm}"), ("reg", op.X, "{%ss}" % r)):
                fixed = (("off", 0),) if name in ("div", "mod", "mov") else ()
                # clang -S prints its 32-to-64-bit zero extension (a 32-bit mov) as "r2 = w2"
                aliases = ("{rd} = {ws}",) if (name, width, source) == ("mov", 32, "reg") else ()
                add(Form(f"{name}{width}_{source}", base | bit, f"{{{r}d}} {sym} {operand}", "mov" if name == "mov" else "alu",
                         fixed=fixed, aliases=aliases, op=name, width=width, source=source))
                if name in ("div", "mod"):
                    add(Form(f"s{name}{width}_{source}", base | bit, f"{{{r}d}} s{sym} {operand}", "alu",
                             fixed=(("off", 1),), cpu=4, op=f"s{name}", width=width, source=source, signed=True))
        add(Form(f"neg{width}", cls | op.ALU_OPS["neg"] | op.K, f"{{{r}d}} = -{{{r}d}}", "neg", op="neg", width=width))
        for bits in ((8, 16, 32) if width == 64 else (8, 16)):
            add(Form(f"movsx{width}_{bits}", cls | op.ALU_OPS["mov"] | op.X, f"{{{r}d}} = (s{bits}){{{r}s}}", "mov",
                     fixed=(("off", bits),), cpu=4, op="movsx", width=width, size=bits // 8, source="reg", signed=True))
    # Arena pointer casts: the kernel converts only between address spaces 0 and 1 (imm = dst_as << 16 | src_as).
    for dst_as, src_as in ((0, 1), (1, 0)):
        add(Form(f"addr_space_cast_{dst_as}{src_as}", op.ALU64 | op.ALU_OPS["mov"] | op.X,
                 f"{{rd}} = addr_space_cast({{rs}}, {dst_as}, {src_as})", "as_cast",
                 fixed=(("off", 1), ("imm", dst_as << 16 | src_as)), cpu=4, op="addr_space_cast"))
    # Byte swaps: ALU class converts to little/big endian; ALU64 (v4) swaps unconditionally.
    for bits in (16, 32, 64):
        for name, opcode in (("le", op.ALU | op.ALU_OPS["end"] | op.TO_LE), ("be", op.ALU | op.ALU_OPS["end"] | op.TO_BE),
                             ("bswap", op.ALU64 | op.ALU_OPS["end"] | op.TO_LE)):
            add(Form(f"{name}{bits}", opcode, f"{{rd}} = {name}{bits} {{rd}}", "end", fixed=(("imm", bits),),
                     cpu=4 if name == "bswap" else 1, op=name, width=bits))

    # ---- JMP and JMP32 -------------------------------------------------------------------------------
    conditions = {
        "jeq": ("==", 1), "jgt": (">", 1), "jge": (">=", 1), "jset": ("&", 1), "jne": ("!=", 1),
        "jsgt": ("s>", 1), "jsge": ("s>=", 1), "jlt": ("<", 2), "jle": ("<=", 2), "jslt": ("s<", 2),
        "jsle": ("s<=", 2),
    }
    for width, cls, r in ((64, op.JMP, "r"), (32, op.JMP32, "w")):
        for name, (sym, cpu) in conditions.items():
            for source, bit, operand in (("imm", op.K, "{imm}"), ("reg", op.X, "{%ss}" % r)):
                tpl = f"if {{{r}d}} {sym} {operand} goto "
                add(Form(f"{name}{width if width == 32 else ''}_{source}", cls | op.JMP_OPS[name] | bit,
                         tpl + "{target}", "jmp", aliases=(tpl + "pc{target}",), cpu=3 if width == 32 else cpu,
                         op=name, width=width, source=source))
    add(Form("ja", op.JMP | op.JMP_OPS["ja"] | op.K, "goto {target}", "ja", aliases=("goto pc{target}",), op="ja"))
    add(Form("gotol", op.JMP32 | op.JMP_OPS["ja"] | op.K, "gotol {ltarget}", "ja", aliases=("gotol pc{ltarget}",),
             cpu=4, op="ja"))
    add(Form("may_goto", op.JMP | op.JMP_OPS["jcond"] | op.K, "may_goto {target}", "may_goto",
             aliases=("may_goto pc{target}",), op="may_goto"))
    call = op.JMP | op.JMP_OPS["call"] | op.K
    add(Form("call", call, "call {helper}", "call", fixed=(("src", 0),), op="helper"))
    add(Form("call_local", call, "call pc{ltarget}", "call", fixed=(("src", op.PSEUDO_CALL),), op="local", llvm=False))
    add(Form("call_kfunc", call, "call kfunc({imm}, {offn})", "call", fixed=(("src", op.PSEUDO_KFUNC_CALL),),
             op="kfunc", llvm=False))
    add(Form("callx", op.JMP | op.JMP_OPS["call"] | op.X, "callx {rd}", "callx", op="callx", kernel=False))
    add(Form("exit", op.JMP | op.JMP_OPS["exit"] | op.K, "exit", "exit", op="exit"))

    # ---- 64-bit immediate loads (two slots), one form per src_reg meaning ---------------------------
    lddw = op.LD | op.IMM | op.SIZES[8]
    for src, name, tpl in (
        (0, "lddw", "{rd} = {imm64} ll"),
        (op.PSEUDO_MAP_FD, "lddw_map_fd", "{rd} = map_fd({imm}) ll"),
        (op.PSEUDO_MAP_VALUE, "lddw_map_value", "{rd} = map_value({imm}, {hi}) ll"),
        (op.PSEUDO_BTF_ID, "lddw_btf_id", "{rd} = btf_id({imm}, {hi}) ll"),
        (op.PSEUDO_FUNC, "lddw_func", "{rd} = func(pc{ltarget}) ll"),
        (op.PSEUDO_MAP_IDX, "lddw_map_idx", "{rd} = map_idx({imm}) ll"),
        (op.PSEUDO_MAP_IDX_VALUE, "lddw_map_idx_value", "{rd} = map_idx_value({imm}, {hi}) ll"),
    ):
        # The kernel log prints plain 64-bit loads without "ll"; accept that spelling after mov has declined it.
        aliases = ("{rd} = {imm64}",) if src == 0 else ()
        add(Form(name, lddw, tpl, "lddw", fixed=(("src", src),), aliases=aliases, op=name, size=8, llvm=src == 0))

    # ---- legacy packet loads (socket filters) -------------------------------------------------------
    for size in (4, 2, 1):
        u = f"u{size * 8}"
        add(Form(f"ld_abs{size * 8}", op.LD | op.ABS | op.SIZES[size], f"r0 = *({u} *)skb[{{imm}}]", "ld_abs", size=size))
        add(Form(f"ld_ind{size * 8}", op.LD | op.IND | op.SIZES[size], f"r0 = *({u} *)skb[{{rs}}{{ind}}]", "ld_ind",
                 size=size))

    # ---- loads and stores ----------------------------------------------------------------------------
    for size in (1, 2, 4, 8):
        u, sz = f"u{size * 8}", op.SIZES[size]
        narrow = size < 8
        add(Form(f"ldx{size * 8}", op.LDX | op.MEM | sz, f"{{rd}} = *({u} *)({{rs}}{{off}})", "ldx", size=size,
                 aliases=(f"{{wd}} = *({u} *)({{rs}}{{off}})",) if narrow else ()))
        if narrow:
            s = f"s{size * 8}"
            add(Form(f"ldxs{size * 8}", op.LDX | op.MEMSX | sz, f"{{rd}} = *({s} *)({{rs}}{{off}})", "ldx", size=size,
                     cpu=4, signed=True))
        add(Form(f"st{size * 8}", op.ST | op.MEM | sz, f"*({u} *)({{rd}}{{off}}) = {{imm}}", "st", size=size))
        add(Form(f"stx{size * 8}", op.STX | op.MEM | sz, f"*({u} *)({{rd}}{{off}}) = {{rs}}", "stx", size=size,
                 aliases=(f"*({u} *)({{rd}}{{off}}) = {{ws}}",) if narrow else ()))

    # ---- atomics -------------------------------------------------------------------------------------
    for size, r, kern in ((8, "r", "atomic64"), (4, "w", "atomic")):
        u, code = f"u{size * 8}", op.STX | op.ATOMIC | op.SIZES[size]
        bits = size * 8
        mem = f"({u} *)({{rd}}{{off}})"
        other_reg = "r" if r == "w" else "w"
        for name, imm in op.ATOMIC_OPS.items():
            sym = {"add": "+=", "or": "|=", "and": "&=", "xor": "^="}[name]
            plain = f"lock *{mem} {sym} {{{r}s}}"
            add(Form(f"atomic_{name}{bits}", code, plain, "atomic", fixed=(("imm", imm),), cpu=1 if name == "add" else 3,
                     aliases=(plain.replace("{%ss}" % r, "{%ss}" % other_reg),) if size == 4 else (),
                     op=name, width=bits, size=size))
            fetch = f"{{{r}s}} = atomic_fetch_{name}({mem}, {{{r}s}})"
            add(Form(f"atomic_fetch_{name}{bits}", code, fetch, "atomic", fixed=(("imm", imm | op.FETCH),), cpu=3,
                     aliases=(fetch.replace("atomic_", f"{kern}_"),) if size == 8 else (),
                     op=name, width=bits, size=size, fetch=True))
        xchg = "xchg_64({rd}{off}, {rs})" if size == 8 else "xchg32_32({rd}{off}, {ws})"
        add(Form(f"xchg{bits}", code, f"{{{r}s}} = {xchg}", "atomic", fixed=(("imm", op.XCHG),), cpu=3,
                 aliases=(f"{{{r}s}} = {kern}_xchg({mem}, {{{r}s}})",), op="xchg", width=bits, size=size, fetch=True))
        cmpxchg = "cmpxchg_64({rd}{off}, r0, {rs})" if size == 8 else "cmpxchg32_32({rd}{off}, w0, {ws})"
        add(Form(f"cmpxchg{bits}", code, f"{r}0 = {cmpxchg}", "atomic", fixed=(("imm", op.CMPXCHG),), cpu=3,
                 aliases=(f"{r}0 = {kern}_cmpxchg({mem}, {r}0, {{{r}s}})",), op="cmpxchg", width=bits, size=size,
                 fetch=True))
    # Load-acquire / store-release (kernel 6.15): any size; dst receives the value, src holds the address.
    for size in (1, 2, 4, 8):
        u, code, r = f"u{size * 8}", op.STX | op.ATOMIC | op.SIZES[size], "r" if size == 8 else "w"
        add(Form(f"load_acquire{size * 8}", code, f"{{{r}d}} = load_acquire(({u} *)({{rs}}{{off}}))", "atomic",
                 fixed=(("imm", op.LOAD_ACQ),), cpu=4, op="load_acquire", width=size * 8, size=size, llvm=False))
        add(Form(f"store_release{size * 8}", code, f"store_release(({u} *)({{rd}}{{off}}), {{{r}s}})", "atomic",
                 fixed=(("imm", op.STORE_REL),), cpu=4, op="store_release", width=size * 8, size=size, llvm=False))
    return forms


FORMS: tuple[Form, ...] = tuple(_build())
FORMS_BY_NAME: dict[str, Form] = {f.name: f for f in FORMS}
FORMS_BY_OPCODE: dict[int, tuple[Form, ...]] = {}
for _form in FORMS:
    FORMS_BY_OPCODE[_form.opcode] = FORMS_BY_OPCODE.get(_form.opcode, ()) + (_form,)
del _form

assert len(FORMS_BY_NAME) == len(FORMS), "form names must be unique"
