// Host stand-in for <poplar/Vertex.hpp>, for testing codelets with g++.
//
// It provides just the parts of the Poplar vertex API that the snn codelets
// use (Vertex, Input, Output, InOut, Vector, VectorList and the layout
// enums), so that ops/poplar/codelets/snn_codelets.cpp compiles unchanged on
// the host. A test harness then binds every field to host memory and calls
// compute() itself, playing the part of the Poplar graph.
//
// Two things are stricter here than on the IPU, on purpose, so that host
// tests catch bugs the hardware would hide:
// * with SNN_SHIM_BOUNDS_CHECK every element access is range checked and an
//   out-of-range index throws poplar::shim::OutOfBounds (on a tile it would
//   read a neighbouring variable or raise a memory exception);
// * with SNN_SHIM_POISON_OUTPUTS binding an Output fills its memory with a
//   garbage pattern first, because Poplar gives no guarantee about what an
//   Output edge holds before compute() writes it.
// Nothing in this header exists on a real IPU: bind() and the shim namespace
// are for the harness only and must never appear in codelet code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace poplar {

enum class VectorLayout { ONE_PTR, SPAN, SHORT_SPAN, SCALED_PTR32, SCALED_PTR64, COMPACT_PTR };
enum class VectorListLayout { ONE_PTR, SCALED_PTR32, COMPACT_DELTAN, DELTANELEMENTS };

namespace shim {

struct OutOfBounds : std::out_of_range {
  explicit OutOfBounds(const std::string& what) : std::out_of_range(what) {}
};

inline void check(std::size_t i, std::size_t n, const char* what) {
#ifdef SNN_SHIM_BOUNDS_CHECK
  if (i >= n) {
    throw OutOfBounds(std::string(what) + ": index " + std::to_string(i) + " out of range [0, " +
                      std::to_string(n) + ")");
  }
#else
  (void)i;
  (void)n;
  (void)what;
#endif
}

// Fills freshly bound Output memory with a value that no correct vertex
// leaves behind: NaN for floats, a large odd pattern for integers.
template <typename T>
void poison(T* p, std::size_t n) {
#ifdef SNN_SHIM_POISON_OUTPUTS
  if constexpr (std::is_floating_point<T>::value) {
    for (std::size_t i = 0; i < n; ++i) p[i] = std::numeric_limits<T>::quiet_NaN();
  } else {
    std::memset(static_cast<void*>(p), 0xA5, n * sizeof(T));
  }
#else
  (void)p;
  (void)n;
#endif
}

// A contiguous run of elements that the vertex may read (Const) or write.
template <typename T, bool Const>
class Span {
 public:
  using value_type = T;
  using pointer = typename std::conditional<Const, const T*, T*>::type;
  using reference = typename std::conditional<Const, const T&, T&>::type;

  Span() = default;
  Span(pointer p, std::size_t n) : p_(p), n_(n) {}

  std::size_t size() const { return n_; }
  reference operator[](std::size_t i) const {
    check(i, n_, "vector edge");
    return p_[i];
  }
  pointer begin() const { return p_; }
  pointer end() const { return p_ + n_; }

 protected:
  pointer p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace shim

// A field that is not an edge: vertex state (Vector<unsigned>) or a vector of
// edges (Vector<Input<Vector<float>>>). The harness sizes it with resize().
template <typename T, VectorLayout L = VectorLayout::SPAN, unsigned MinAlign = alignof(T),
          bool Interleaved = false>
class Vector {
 public:
  std::size_t size() const { return items_.size(); }
  T& operator[](std::size_t i) {
    shim::check(i, items_.size(), "Vector field");
    return items_[i];
  }
  const T& operator[](std::size_t i) const {
    shim::check(i, items_.size(), "Vector field");
    return items_[i];
  }
  // Harness only.
  void resize(std::size_t n) { items_.resize(n); }

 private:
  std::vector<T> items_;
};

// Marker type; only Input/Output/InOut<VectorList<...>> are usable.
template <typename T, VectorListLayout L = VectorListLayout::DELTANELEMENTS,
          unsigned MinAlign = alignof(T), bool Interleaved = false>
class VectorList;

class Vertex {};

namespace shim {

template <typename T, bool Const, bool Poison>
class ScalarEdge {
 public:
  using pointer = typename std::conditional<Const, const T*, T*>::type;
  using reference = typename std::conditional<Const, const T&, T&>::type;

  reference operator*() const { return *get(); }
  operator T() const { return *get(); }
  // Harness only.
  void bind(pointer p) {
    p_ = p;
    if constexpr (Poison) poison(const_cast<T*>(p), 1);
  }

 private:
  pointer get() const {
    if (p_ == nullptr) throw OutOfBounds("scalar edge used before it was connected");
    return p_;
  }
  pointer p_ = nullptr;
};

template <typename T, bool Const, bool Poison>
class VectorEdge : public Span<T, Const> {
 public:
  using typename Span<T, Const>::pointer;
  // Harness only.
  void bind(pointer p, std::size_t n) {
    this->p_ = p;
    this->n_ = n;
    if constexpr (Poison) poison(const_cast<T*>(p), n);
  }
};

// A list of separately connected vectors (on a tile these would be distinct
// regions, each with its own size).
template <typename T, bool Const, bool Poison>
class ListEdge {
 public:
  using pointer = typename std::conditional<Const, const T*, T*>::type;

  std::size_t size() const { return items_.size(); }
  Span<T, Const> operator[](std::size_t i) const {
    check(i, items_.size(), "vector list");
    return items_[i];
  }
  // Harness only.
  void add(pointer p, std::size_t n) {
    if constexpr (Poison) poison(const_cast<T*>(p), n);
    items_.emplace_back(p, n);
  }
  void clear() { items_.clear(); }

 private:
  std::vector<Span<T, Const>> items_;
};

}  // namespace shim

template <typename T>
class Input : public shim::ScalarEdge<T, true, false> {};
template <typename T>
class Output : public shim::ScalarEdge<T, false, true> {};
template <typename T>
class InOut : public shim::ScalarEdge<T, false, false> {};

template <typename T, VectorLayout L, unsigned A, bool I>
class Input<Vector<T, L, A, I>> : public shim::VectorEdge<T, true, false> {};
template <typename T, VectorLayout L, unsigned A, bool I>
class Output<Vector<T, L, A, I>> : public shim::VectorEdge<T, false, true> {};
template <typename T, VectorLayout L, unsigned A, bool I>
class InOut<Vector<T, L, A, I>> : public shim::VectorEdge<T, false, false> {};

template <typename T, VectorListLayout L, unsigned A, bool I>
class Input<VectorList<T, L, A, I>> : public shim::ListEdge<T, true, false> {};
template <typename T, VectorListLayout L, unsigned A, bool I>
class Output<VectorList<T, L, A, I>> : public shim::ListEdge<T, false, true> {};
template <typename T, VectorListLayout L, unsigned A, bool I>
class InOut<VectorList<T, L, A, I>> : public shim::ListEdge<T, false, false> {};

}  // namespace poplar
