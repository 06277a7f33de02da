"""Explicit SIMD vectors in Numba kernels: a vector type and the few intrinsics a
register-blocked microkernel needs (:mod:`fastcnn.kernels.microkernel`).

Why not plain loops: a microkernel keeps a tile of accumulators (a few output
pixels x a few dozen filters) in registers across the whole reduction. Written
as scalar locals or a small array with constant loops, LLVM either unrolls the
filter loop into scalar FMAs that the SLP vectorizer does not re-pack (about
8 GFLOP/s), or, allowed to reassociate, vectorizes the *reduction* loop with
gathers instead. Here the kernel says what it means: ``vload`` a row of
weights as one vector, ``vbcast`` an input value to all lanes, ``vfma`` them
into an accumulator vector held in :func:`stack_array` (an ``alloca``, which
LLVM's SROA promotes to registers once the tile loops are unrolled, because
nothing else can alias it).

The vectors are LLVM's generic ``<W x float>`` types: ``W`` lanes of the array's
dtype, any power of two. LLVM splits them into the machine's registers (a
16-lane float32 vector is one AVX-512 register, or two AVX2 ones), so the same
kernel runs on any x86-64 or ARM CPU; which width is fastest is measured
(:mod:`fastcnn.kernels.microkernel`). ``vfma`` is ``llvm.fmuladd``: one rounding
where the CPU has FMA, a multiply and an add where it has not.

Every intrinsic indexes the raw data pointer of a 1-D C-contiguous array: no
negative-index wrap, no bounds check. The caller guarantees ``0 <= i`` and
``i + W <= size``.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model
from numba.np.arrayobj import make_array, populate_array

__all__ = ["Vector", "stack_array", "vload", "vstore", "vbcast", "vfma", "vrelu"]


class Vector(types.Type):
    """``width`` lanes of ``dtype`` (a Numba float type), an LLVM vector value."""

    def __init__(self, dtype, width):
        self.dtype, self.width = dtype, width
        super().__init__(name=f"Vector({dtype} x {width})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        lane = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(lane, fe_type.width))


def _flat_float_array(arr):
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(arr.dtype, types.Float))


def _read_vector(arr, i, width):
    """The :class:`Vector` a read of ``width`` (a literal int) lanes from ``arr`` at ``i`` gives, or None
    (no typing: Numba then reports the call as unsupported for these argument types)."""
    if _flat_float_array(arr) and isinstance(i, types.Integer) and isinstance(width, types.IntegerLiteral):
        return Vector(arr.dtype, width.literal_value)
    return None


def _element_pointer(context, builder, arrty, arr, index):
    return builder.gep(make_array(arrty)(context, builder, arr).data, [index])


def _vector_pointer(context, builder, arrty, arr, index, vector):
    pointer = _element_pointer(context, builder, arrty, arr, index)
    return builder.bitcast(pointer, context.get_value_type(vector).as_pointer())


def _lane_align(context, vector):
    return context.get_abi_sizeof(context.get_value_type(vector.dtype))


def _splat(builder, lanes, scalar):
    vector = builder.insert_element(ir.Constant(lanes, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes.count), [0] * lanes.count)
    return builder.shuffle_vector(vector, ir.Constant(lanes, ir.Undefined), mask)


@intrinsic
def stack_array(typingctx, size, like):
    """A 1-D array of ``size`` (a literal int) elements of ``like``'s dtype on the stack, uninitialized.

    It must not outlive the function that creates it (it has no owner to keep it alive).
    """
    if not isinstance(size, types.IntegerLiteral) or not isinstance(like, types.Array):
        return None
    count, dtype = size.literal_value, like.dtype
    result = types.Array(dtype, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(dtype)
        storage = cgutils.alloca_once(builder, ir.ArrayType(element, count))
        array = make_array(result)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(element))
        populate_array(array, data=builder.bitcast(storage, element.as_pointer()),
                       shape=[context.get_constant(types.intp, count)], strides=[itemsize], itemsize=itemsize,
                       meminfo=None)
        return array._getvalue()

    return result(size, like), codegen


@intrinsic
def vload(typingctx, arr, i, width):
    """``arr[i:i + width]`` as a vector (``width`` a literal int)."""
    vector = _read_vector(arr, i, width)
    if vector is None:
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1], vector)
        return builder.load(pointer, align=_lane_align(context, vector))

    return vector(arr, i, width), codegen


@intrinsic
def vstore(typingctx, arr, i, value):
    """``arr[i:i + W] = value`` for a vector of ``W`` lanes of ``arr``'s dtype."""
    if not (_flat_float_array(arr) and isinstance(i, types.Integer) and isinstance(value, Vector)
            and value.dtype == arr.dtype):
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[2])
        builder.store(args[2], pointer, align=_lane_align(context, signature.args[2]))
        return context.get_dummy_value()

    return types.none(arr, i, value), codegen


@intrinsic
def vbcast(typingctx, arr, i, width):
    """``arr[i]`` in all ``width`` lanes (``width`` a literal int)."""
    vector = _read_vector(arr, i, width)
    if vector is None:
        return None

    def codegen(context, builder, signature, args):
        scalar = builder.load(_element_pointer(context, builder, signature.args[0], args[0], args[1]))
        return _splat(builder, context.get_value_type(vector), scalar)

    return vector(arr, i, width), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane (``llvm.fmuladd``: fused where the CPU has FMA)."""
    if not (isinstance(a, Vector) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        lanes = context.get_value_type(signature.args[0])
        suffix = f"v{lanes.count}f{context.get_abi_sizeof(lanes.element) * 8}"
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lanes, [lanes] * 3),
                                                  f"llvm.fmuladd.{suffix}")
        return builder.call(function, args)

    return a(a, b, c), codegen


@intrinsic
def vrelu(typingctx, v):
    """``0 if v <= 0 else v`` lane by lane: as :func:`fastcnn.kernels.activations.relu_forward`, NaN passes."""
    if not isinstance(v, Vector):
        return None

    def codegen(context, builder, signature, args):
        zeros = ir.Constant(context.get_value_type(signature.args[0]), None)
        return builder.select(builder.fcmp_ordered("<=", args[0], zeros), zeros, args[0])

    return v(v), codegen
