// Fused TensorFlow kernels for the ViT's memory-bound layers, registered through TensorFlow's C
// kernel API (tensorflow/c/kernels.h, ops.h) into the same op registry that tfjs-node's binding runs
// ops from. src/model/tensorflow-ops.ts calls them by name with executeOp, like any TensorFlow op.
//
// Why: on a small model each of these layers is 4-11 separate TensorFlow ops, every one a full pass
// over memory plus tens of microseconds of eager dispatch (vit_fmnist_tiny at batch 128: ~190 such
// ops per pass, ~20 ms of its ~56). Each kernel here is one pass, or two where a row needs its
// statistics first. Rows are independent, and every reduction runs in a fixed order, so results do
// not depend on anything but the inputs (the same bits on every run; a resumed run stays bit-exact).
//
// The file is also an N-API module: loading it with require() registers the ops once (its init
// function), so no change to tfjs-node's binding is needed. scripts/build-tensorflow-engine.mjs
// compiles it against the libraries and headers of the wheel the binding was built from.

#include <node_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "tensorflow/c/kernels.h"
#include "tensorflow/c/ops.h"

namespace {

// ---------------------------------------------------------------------------------------------
// Vectorizable math. GCC vectorizes the loops that call these (no branches, no libm calls); libm's
// scalar erff/expf would cost more than the whole pass they replace.

/** Lanes of the row reductions: 8 partial sums, combined in a fixed order, so GCC vectorizes them
 * without reassociating float adds (no -ffast-math), and the result is the same on every call. */
constexpr int kLanes = 8;

/** Σ x[j] for j < n, in kLanes interleaved partial sums. */
inline float RowSum(const float* __restrict x, int64_t n) {
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) acc[l] += x[j + l];
  for (; j < n; j++) acc[0] += x[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/** Σ x[j] y[j] for j < n, as RowSum. */
inline float RowDot(const float* __restrict x, const float* __restrict y, int64_t n) {
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) acc[l] += x[j + l] * y[j + l];
  for (; j < n; j++) acc[0] += x[j] * y[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/** Largest x[j] for j < n (n >= 1). */
inline float RowMax(const float* __restrict x, int64_t n) {
  float acc[kLanes];
  for (int l = 0; l < kLanes; l++) acc[l] = x[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  for (; j < n; j++) acc[0] = x[j] > acc[0] ? x[j] : acc[0];
  float m = acc[0];
  for (int l = 1; l < kLanes; l++) m = acc[l] > m ? acc[l] : m;
  return m;
}

/** e^x for x <= 0 (softmax's shifted scores, GELU's -x^2/2): Cephes' expf (relative error < 2e-7
 * on [-87, 0]), 2^n built from its exponent bits. Below -87 it returns e^-87 ~ 1.6e-38 instead of
 * a denormal or 0, which no sum here can tell from 0. */
inline float ExpNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return er * scale;
}

/** erf(x): the rational approximation of Eigen's and XLA's float erf (absolute error ~1e-7), on x
 * clamped to [-4, 4], outside which erf is +-1 in float. */
inline float Erf(float x) {
  x = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = p * x;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p / q;
}

// ---------------------------------------------------------------------------------------------
// Kernel plumbing.

/** A kernel's inputs, released when the compute function returns. */
class Inputs {
 public:
  Inputs(TF_OpKernelContext* ctx, int count, TF_Status* status) : count_(count) {
    for (int i = 0; i < count && TF_GetCode(status) == TF_OK; i++) TF_GetInput(ctx, i, &tensors_[i], status);
  }
  ~Inputs() {
    for (int i = 0; i < count_; i++)
      if (tensors_[i] != nullptr) TF_DeleteTensor(tensors_[i]);
  }
  const float* data(int i) const { return static_cast<const float*>(TF_TensorData(tensors_[i])); }
  TF_Tensor* tensor(int i) const { return tensors_[i]; }
  int64_t elements(int i) const { return TF_TensorElementCount(tensors_[i]); }
  /** Size of the last axis (1 for a scalar). */
  int64_t lastDim(int i) const {
    const int rank = TF_NumDims(tensors_[i]);
    return rank == 0 ? 1 : TF_Dim(tensors_[i], rank - 1);
  }

 private:
  static constexpr int kMax = 4;
  int count_;
  TF_Tensor* tensors_[kMax] = {nullptr, nullptr, nullptr, nullptr};
};

/** An output of the given shape, released when the compute function returns. */
class Output {
 public:
  Output(TF_OpKernelContext* ctx, int index, const int64_t* dims, int rank, TF_Status* status) {
    int64_t elements = 1;
    for (int d = 0; d < rank; d++) elements *= dims[d];
    if (TF_GetCode(status) == TF_OK)
      tensor_ = TF_AllocateOutput(ctx, index, TF_FLOAT, dims, rank, elements * sizeof(float), status);
  }
  /** The same shape as an input. */
  Output(TF_OpKernelContext* ctx, int index, TF_Tensor* like, TF_Status* status) {
    const int rank = TF_NumDims(like);
    int64_t dims[8];
    for (int d = 0; d < rank && d < 8; d++) dims[d] = TF_Dim(like, d);
    if (TF_GetCode(status) == TF_OK)
      tensor_ = TF_AllocateOutput(ctx, index, TF_FLOAT, dims, rank, TF_TensorByteSize(like), status);
  }
  ~Output() {
    if (tensor_ != nullptr) TF_DeleteTensor(tensor_);
  }
  float* data() const { return static_cast<float*>(TF_TensorData(tensor_)); }

 private:
  TF_Tensor* tensor_ = nullptr;
};

/** Fails the op with a message unless `ok`; returns ok. */
bool Check(TF_OpKernelContext* ctx, bool ok, const char* message) {
  if (!ok) {
    TF_Status* status = TF_NewStatus();
    TF_SetStatus(status, TF_INVALID_ARGUMENT, message);
    TF_OpKernelContext_Failure(ctx, status);
    TF_DeleteStatus(status);
  }
  return ok;
}

/** Reports a failed TF_* call to the op; returns whether it succeeded. */
bool Ok(TF_OpKernelContext* ctx, TF_Status* status) {
  if (TF_GetCode(status) == TF_OK) return true;
  TF_OpKernelContext_Failure(ctx, status);
  return false;
}

/** Runs body(inputs, status) on the kernel's first `count` inputs; a failed TF_* call fails the op. */
template <typename Body>
void WithInputs(TF_OpKernelContext* ctx, int count, Body body) {
  TF_Status* status = TF_NewStatus();
  {
    Inputs in(ctx, count, status);
    if (Ok(ctx, status)) body(in, status);
  }
  TF_DeleteStatus(status);
}

/** Kernels whose one attribute is a float (eps, scale): the create function keeps it. */
void* CreateWithFloatAttr(TF_OpKernelConstruction* ctx, const char* name) {
  TF_Status* status = TF_NewStatus();
  float value = 0;
  TF_OpKernelConstruction_GetAttrFloat(ctx, name, &value, status);
  if (TF_GetCode(status) != TF_OK) TF_OpKernelConstruction_Failure(ctx, status);
  TF_DeleteStatus(status);
  return new float(value);
}
void* CreateWithEps(TF_OpKernelConstruction* ctx) { return CreateWithFloatAttr(ctx, "eps"); }
void* CreateWithScale(TF_OpKernelConstruction* ctx) { return CreateWithFloatAttr(ctx, "scale"); }
void DeleteFloatAttr(void* kernel) { delete static_cast<float*>(kernel); }

// ---------------------------------------------------------------------------------------------
// The kernels. Every float tensor is [rows, n] over its last axis; weights are [n].

/**
 * VitLayerNorm(x [.., n], weight [n], bias [n]; eps) -> y, xHat [.., n], rstd [.., 1]: LayerNorm
 * over the last axis as layers.ts computes it from ops (mean, mean of squared deviations, then
 * xHat = (x - mean) rstd and y = xHat weight + bias), in two passes over each row.
 */
void LayerNormCompute(void* kernel, TF_OpKernelContext* ctx) {
  const float eps = *static_cast<float*>(kernel);
  WithInputs(ctx, 3, [&](const Inputs& in, TF_Status* status) {
    const int64_t n = in.lastDim(0);
    if (!Check(ctx, n > 0 && in.elements(1) == n && in.elements(2) == n, "VitLayerNorm: weight and bias must have the size of x's last axis")) return;
    const int64_t rows = in.elements(0) / n;
    const int rank = TF_NumDims(in.tensor(0));
    int64_t statDims[8];
    for (int d = 0; d < rank - 1; d++) statDims[d] = TF_Dim(in.tensor(0), d);
    statDims[rank - 1] = 1;
    Output y(ctx, 0, in.tensor(0), status), xHat(ctx, 1, in.tensor(0), status), rstd(ctx, 2, statDims, rank, status);
    if (!Ok(ctx, status)) return;
    const float *x = in.data(0), *w = in.data(1), *b = in.data(2);
    float *yd = y.data(), *hd = xHat.data(), *rd = rstd.data();
    const float invN = 1.0f / static_cast<float>(n);
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = x + r * n;
      float* hr = hd + r * n;
      float* yr = yd + r * n;
      const float mean = RowSum(xr, n) * invN;
      for (int64_t j = 0; j < n; j++) hr[j] = xr[j] - mean;
      const float s = 1.0f / std::sqrt(RowDot(hr, hr, n) * invN + eps);
      rd[r] = s;
      for (int64_t j = 0; j < n; j++) {
        hr[j] *= s;
        yr[j] = hr[j] * w[j] + b[j];
      }
    }
  });
}

/**
 * VitLayerNormGrad(dy, xHat [.., n], rstd [.., 1], weight [n]) -> dx [.., n], dWeight [n], dBias [n]:
 * with g = dy weight, dx = rstd (g - mean(g) - xHat mean(g xHat)) per row; dWeight = Σ_rows dy xHat,
 * dBias = Σ_rows dy, summed row by row in order.
 */
void LayerNormGradCompute(void*, TF_OpKernelContext* ctx) {
  WithInputs(ctx, 4, [&](const Inputs& in, TF_Status* status) {
    const int64_t n = in.lastDim(0);
    const int64_t rows = in.elements(0) / n;
    if (!Check(ctx, n > 0 && in.elements(1) == rows * n && in.elements(2) == rows && in.elements(3) == n,
               "VitLayerNormGrad: dy and xHat must be [rows, n], rstd [rows, 1], weight [n]"))
      return;
    const int64_t vecDims[1] = {n};
    Output dx(ctx, 0, in.tensor(0), status), dw(ctx, 1, vecDims, 1, status), db(ctx, 2, vecDims, 1, status);
    if (!Ok(ctx, status)) return;
    const float *dy = in.data(0), *xHat = in.data(1), *rstd = in.data(2), *w = in.data(3);
    float *dxd = dx.data(), *dwd = dw.data(), *dbd = db.data();
    std::memset(dwd, 0, n * sizeof(float));
    std::memset(dbd, 0, n * sizeof(float));
    const float invN = 1.0f / static_cast<float>(n);
    for (int64_t r = 0; r < rows; r++) {
      const float* dyr = dy + r * n;
      const float* hr = xHat + r * n;
      float* dxr = dxd + r * n;
      for (int64_t j = 0; j < n; j++) dxr[j] = dyr[j] * w[j];  // g, in dx's row until it is replaced
      const float meanG = RowSum(dxr, n) * invN;
      const float meanGH = RowDot(dxr, hr, n) * invN;
      const float s = rstd[r];
      for (int64_t j = 0; j < n; j++) {
        dxr[j] = ((dxr[j] - meanG) - hr[j] * meanGH) * s;
        dwd[j] += dyr[j] * hr[j];
        dbd[j] += dyr[j];
      }
    }
  });
}

/** VitGelu(x) -> y, cdf: exact GELU, y = x Phi(x) with Phi(x) = 0.5 (1 + erf(x / sqrt 2)). */
void GeluCompute(void*, TF_OpKernelContext* ctx) {
  WithInputs(ctx, 1, [&](const Inputs& in, TF_Status* status) {
    Output y(ctx, 0, in.tensor(0), status), cdf(ctx, 1, in.tensor(0), status);
    if (!Ok(ctx, status)) return;
    const float* x = in.data(0);
    float *yd = y.data(), *cd = cdf.data();
    const int64_t count = in.elements(0);
    for (int64_t i = 0; i < count; i++) {
      const float c = 0.5f * (1.0f + Erf(x[i] * 0.70710678118654752f));
      cd[i] = c;
      yd[i] = x[i] * c;
    }
  });
}

/** VitGeluGrad(dy, x, cdf) -> dx = dy (Phi(x) + x phi(x)), phi the standard normal density. */
void GeluGradCompute(void*, TF_OpKernelContext* ctx) {
  WithInputs(ctx, 3, [&](const Inputs& in, TF_Status* status) {
    const int64_t count = in.elements(0);
    if (!Check(ctx, in.elements(1) == count && in.elements(2) == count, "VitGeluGrad: dy, x and cdf must have the same size")) return;
    Output dx(ctx, 0, in.tensor(0), status);
    if (!Ok(ctx, status)) return;
    const float *dy = in.data(0), *x = in.data(1), *cdf = in.data(2);
    float* dxd = dx.data();
    for (int64_t i = 0; i < count; i++) {
      const float pdf = ExpNonPositive(-0.5f * x[i] * x[i]) * 0.39894228040143268f;
      dxd[i] = dy[i] * (cdf[i] + x[i] * pdf);
    }
  });
}

/** VitScaledSoftmax(scores [.., n]; scale) -> softmax(scale scores) over the last axis. */
void ScaledSoftmaxCompute(void* kernel, TF_OpKernelContext* ctx) {
  const float scale = *static_cast<float*>(kernel);
  WithInputs(ctx, 1, [&](const Inputs& in, TF_Status* status) {
    Output y(ctx, 0, in.tensor(0), status);
    if (!Ok(ctx, status)) return;
    const int64_t n = in.lastDim(0);
    const int64_t rows = n == 0 ? 0 : in.elements(0) / n;
    const float* x = in.data(0);
    float* yd = y.data();
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = x + r * n;
      float* yr = yd + r * n;
      const float m = RowMax(xr, n) * scale;  // scale > 0: the row's largest scaled score
      for (int64_t j = 0; j < n; j++) yr[j] = ExpNonPositive(xr[j] * scale - m);
      const float inv = 1.0f / RowSum(yr, n);
      for (int64_t j = 0; j < n; j++) yr[j] *= inv;
    }
  });
}

/** VitScaledSoftmaxGrad(att, dAtt [.., n]; scale) -> scale att (dAtt - Σ_row dAtt att): the scores' gradient. */
void ScaledSoftmaxGradCompute(void* kernel, TF_OpKernelContext* ctx) {
  const float scale = *static_cast<float*>(kernel);
  WithInputs(ctx, 2, [&](const Inputs& in, TF_Status* status) {
    const int64_t n = in.lastDim(0);
    if (!Check(ctx, in.elements(1) == in.elements(0) && in.lastDim(1) == n, "VitScaledSoftmaxGrad: att and dAtt must have the same shape")) return;
    Output dx(ctx, 0, in.tensor(0), status);
    if (!Ok(ctx, status)) return;
    const int64_t rows = n == 0 ? 0 : in.elements(0) / n;
    const float *att = in.data(0), *dAtt = in.data(1);
    float* dxd = dx.data();
    for (int64_t r = 0; r < rows; r++) {
      const float* ar = att + r * n;
      const float* gr = dAtt + r * n;
      float* dr = dxd + r * n;
      const float dot = RowDot(gr, ar, n);
      for (int64_t j = 0; j < n; j++) dr[j] = ar[j] * (gr[j] - dot) * scale;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Registration.

struct OpSpec {
  const char* name;
  const char* inputs[4];
  const char* outputs[3];
  const char* attr;  // or nullptr
  void* (*create)(TF_OpKernelConstruction*);
  void (*compute)(void*, TF_OpKernelContext*);
  void (*destroy)(void*);
};

const OpSpec kOps[] = {
    {"VitLayerNorm", {"x: float", "weight: float", "bias: float"}, {"y: float", "x_hat: float", "rstd: float"}, "eps: float",
     CreateWithEps, LayerNormCompute, DeleteFloatAttr},
    {"VitLayerNormGrad", {"dy: float", "x_hat: float", "rstd: float", "weight: float"}, {"dx: float", "d_weight: float", "d_bias: float"},
     nullptr, nullptr, LayerNormGradCompute, nullptr},
    {"VitGelu", {"x: float"}, {"y: float", "cdf: float"}, nullptr, nullptr, GeluCompute, nullptr},
    {"VitGeluGrad", {"dy: float", "x: float", "cdf: float"}, {"dx: float"}, nullptr, nullptr, GeluGradCompute, nullptr},
    {"VitScaledSoftmax", {"scores: float"}, {"y: float"}, "scale: float", CreateWithScale, ScaledSoftmaxCompute, DeleteFloatAttr},
    {"VitScaledSoftmaxGrad", {"att: float", "d_att: float"}, {"d_scores: float"}, "scale: float", CreateWithScale,
     ScaledSoftmaxGradCompute, DeleteFloatAttr},
};

/** Outputs' shapes are left unknown: eager execution takes them from the kernel. */
void UnknownShapes(TF_ShapeInferenceContext*, TF_Status* status) { TF_SetStatus(status, TF_OK, ""); }

/** Registers every op and its CPU kernel; an empty string on success, else TensorFlow's message. */
const char* RegisterOps() {
  static bool done = false;
  static char failure[512] = "";
  if (done) return failure;
  done = true;
  TF_Status* status = TF_NewStatus();
  for (const OpSpec& op : kOps) {
    TF_OpDefinitionBuilder* def = TF_NewOpDefinitionBuilder(op.name);
    for (const char* input : op.inputs)
      if (input != nullptr) TF_OpDefinitionBuilderAddInput(def, input);
    for (const char* output : op.outputs)
      if (output != nullptr) TF_OpDefinitionBuilderAddOutput(def, output);
    if (op.attr != nullptr) TF_OpDefinitionBuilderAddAttr(def, op.attr);
    TF_OpDefinitionBuilderSetShapeInferenceFunction(def, UnknownShapes);
    TF_RegisterOpDefinition(def, status);
    if (TF_GetCode(status) == TF_OK) {
      TF_KernelBuilder* kernel = TF_NewKernelBuilder(op.name, "CPU", op.create, op.compute, op.destroy);
      TF_RegisterKernelBuilder(op.name, kernel, status);
    }
    if (TF_GetCode(status) != TF_OK) {
      std::snprintf(failure, sizeof failure, "registering %s: %s", op.name, TF_Message(status));
      break;
    }
  }
  TF_DeleteStatus(status);
  return failure;
}

}  // namespace

/** module.exports = { ops: [names], failure: '' or why registration failed }. */
NAPI_MODULE_INIT() {
  const char* failure = RegisterOps();
  napi_value names, message;
  napi_create_array(env, &names);
  uint32_t i = 0;
  for (const OpSpec& op : kOps) {
    napi_value name;
    napi_create_string_utf8(env, op.name, NAPI_AUTO_LENGTH, &name);
    napi_set_element(env, names, i++, name);
  }
  napi_create_string_utf8(env, failure, NAPI_AUTO_LENGTH, &message);
  napi_set_named_property(env, exports, "ops", names);
  napi_set_named_property(env, exports, "failure", message);
  return exports;
}
