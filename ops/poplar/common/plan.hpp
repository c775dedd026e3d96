// The tile plan of the snn IPU ops: which tile holds which neurons of which
// layer, and which tile merges the spikes of each batch row.
//
// The plan is made in Python (snn_runner/ipu/planner.py) and reaches the
// graph builders as the `attributes` string of the custom op, so there is one
// planner and the C++ side only parses and checks. The host harness parses
// the same string with the same code, which is how the host tests cover the
// hand-over. No Poplar headers here: this file is compiled on the host too.
//
// Format: `key=value` pairs separated by ';', lists comma separated, layer
// keys prefixed with `l<index>.`. format() writes the canonical form, which
// is also what the planner writes, so a parse/format round trip is exact.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace snn {
namespace plan {

constexpr int kVersion = 1;

struct LayerPlan {
  int nIn = 0;
  int nOut = 0;
  int capacity = 0;                // K
  std::vector<unsigned> tiles;     // compute tile of each slice
  std::vector<int> starts;         // slice s holds neurons [starts[s], starts[s+1])
  std::vector<unsigned> rowTiles;  // row tile of each batch row

  int numSlices() const { return static_cast<int>(tiles.size()); }
  int begin(int s) const { return starts[s]; }
  int width(int s) const { return starts[s + 1] - starts[s]; }
  int maxWidth() const {
    int w = 0;
    for (int s = 0; s < numSlices(); ++s) w = std::max(w, width(s));
    return w;
  }
  // Entries in each per-tile spike/carrier list: a slice can never hold more
  // than its width, and more than K are never needed.
  int localCapacity() const { return std::min(capacity, maxWidth()); }
};

struct Plan {
  int batch = 0;
  int timeSteps = 1;
  int inputCapacity = 0;  // K0 (fused op only)
  int workers = 6;        // weight-row ranges per tile for the batch reductions
  float inputScale = 10.f;
  float beta = 10.f;
  std::vector<LayerPlan> layers;
};

// Contiguous part i of `parts` near-equal parts of [0, n).
inline std::pair<int, int> splitRange(int n, int parts, int i) {
  const long long b = static_cast<long long>(n) * i / parts;
  const long long e = static_cast<long long>(n) * (i + 1) / parts;
  return {static_cast<int>(b), static_cast<int>(e)};
}

// Weight-row ranges [first, second) of a tile for the vertices that reduce
// over the batch: one per worker thread, none empty.
inline std::vector<std::pair<int, int>> rowRanges(int rows, int workers) {
  std::vector<std::pair<int, int>> out;
  const int parts = std::max(1, std::min(workers, rows));
  for (int i = 0; i < parts; ++i) {
    const auto r = splitRange(rows, parts, i);
    if (r.second > r.first) out.push_back(r);
  }
  return out;
}

namespace detail {

[[noreturn]] inline void fail(const std::string& what) {
  throw std::invalid_argument("snn IPU plan: " + what);
}

inline long long toInt(const std::string& key, const std::string& text) {
  if (text.empty()) fail("empty value for '" + key + "'");
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') fail("'" + key + "' must be an integer, got '" + text + "'");
  return v;
}

inline float toFloat(const std::string& key, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(text.c_str(), &end);
  if (text.empty() || errno != 0 || *end != '\0') {
    fail("'" + key + "' must be a number, got '" + text + "'");
  }
  return v;
}

template <typename T>
std::vector<T> toList(const std::string& key, const std::string& text) {
  std::vector<T> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const long long v = toInt(key, item);
    if (v < 0) fail("'" + key + "' entries must be >= 0, got " + item);
    out.push_back(static_cast<T>(v));
  }
  return out;
}

class Fields {
 public:
  explicit Fields(const std::string& text) {
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ';')) {
      if (item.empty()) continue;
      const auto eq = item.find('=');
      if (eq == std::string::npos) fail("expected key=value, got '" + item + "'");
      const std::string key = item.substr(0, eq);
      if (!map_.emplace(key, item.substr(eq + 1)).second) fail("duplicate key '" + key + "'");
    }
  }
  const std::string& get(const std::string& key) {
    auto it = map_.find(key);
    if (it == map_.end()) fail("missing key '" + key + "'");
    used_.push_back(key);
    return it->second;
  }
  int getInt(const std::string& key, long long lo, long long hi) {
    const long long v = toInt(key, get(key));
    if (v < lo || v > hi) {
      fail("'" + key + "' = " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]");
    }
    return static_cast<int>(v);
  }
  void rejectUnknown() const {
    for (const auto& kv : map_) {
      if (std::find(used_.begin(), used_.end(), kv.first) == used_.end()) {
        fail("unknown key '" + kv.first + "'");
      }
    }
  }

 private:
  std::map<std::string, std::string> map_;
  std::vector<std::string> used_;
};

inline std::string formatFloat(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

template <typename T>
std::string join(const std::vector<T>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

}  // namespace detail

// Checks the plan's own consistency; shapes of actual tensors are checked by
// the caller against the plan (see checkLayer).
inline void validate(const Plan& p) {
  using detail::fail;
  if (p.layers.empty()) fail("no layers");
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerPlan& L = p.layers[l];
    const std::string name = "layer " + std::to_string(l) + ": ";
    if (L.tiles.empty()) fail(name + "no tiles");
    if (L.starts.size() != L.tiles.size() + 1) {
      fail(name + "starts must have one entry more than tiles");
    }
    if (L.starts.front() != 0 || L.starts.back() != L.nOut) {
      fail(name + "slices must cover neurons [0, " + std::to_string(L.nOut) + ")");
    }
    for (int s = 0; s < L.numSlices(); ++s) {
      if (L.width(s) < 1) fail(name + "slice " + std::to_string(s) + " is empty");
    }
    if (L.capacity < 1 || L.capacity > L.nOut) {
      fail(name + "capacity " + std::to_string(L.capacity) + " outside [1, " +
           std::to_string(L.nOut) + "]");
    }
    if (static_cast<int>(L.rowTiles.size()) != p.batch) {
      fail(name + "row_tiles must name one tile per batch row (" + std::to_string(p.batch) + ")");
    }
    if (l > 0 && L.nIn != p.layers[l - 1].nOut) {
      fail(name + "n_in " + std::to_string(L.nIn) + " differs from the previous layer's n_out " +
           std::to_string(p.layers[l - 1].nOut));
    }
  }
}

inline Plan parse(const std::string& attributes) {
  detail::Fields f(attributes);
  const int version = f.getInt("version", 0, 1 << 30);
  if (version != kVersion) {
    detail::fail("version " + std::to_string(version) + " is not supported (expected " +
                 std::to_string(kVersion) + "); rebuild the IPU ops");
  }
  Plan p;
  p.batch = f.getInt("batch", 1, 1 << 30);
  p.timeSteps = f.getInt("time_steps", 1, 1 << 30);
  p.inputCapacity = f.getInt("input_capacity", 0, 1 << 30);
  p.workers = f.getInt("workers", 1, 1 << 16);
  p.inputScale = detail::toFloat("input_scale", f.get("input_scale"));
  p.beta = detail::toFloat("beta", f.get("beta"));
  const int n = f.getInt("layers", 1, 1 << 16);
  for (int l = 0; l < n; ++l) {
    const std::string pre = "l" + std::to_string(l) + ".";
    LayerPlan L;
    L.nIn = f.getInt(pre + "n_in", 0, 1 << 30);
    L.nOut = f.getInt(pre + "n_out", 1, 1 << 30);
    L.capacity = f.getInt(pre + "capacity", 1, 1 << 30);
    L.tiles = detail::toList<unsigned>(pre + "tiles", f.get(pre + "tiles"));
    L.starts = detail::toList<int>(pre + "starts", f.get(pre + "starts"));
    L.rowTiles = detail::toList<unsigned>(pre + "row_tiles", f.get(pre + "row_tiles"));
    p.layers.push_back(std::move(L));
  }
  f.rejectUnknown();
  validate(p);
  return p;
}

inline std::string format(const Plan& p) {
  std::string s = "version=" + std::to_string(kVersion);
  s += ";batch=" + std::to_string(p.batch);
  s += ";time_steps=" + std::to_string(p.timeSteps);
  s += ";input_capacity=" + std::to_string(p.inputCapacity);
  s += ";workers=" + std::to_string(p.workers);
  s += ";input_scale=" + detail::formatFloat(p.inputScale);
  s += ";beta=" + detail::formatFloat(p.beta);
  s += ";layers=" + std::to_string(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerPlan& L = p.layers[l];
    const std::string pre = ";l" + std::to_string(l) + ".";
    s += pre + "n_in=" + std::to_string(L.nIn);
    s += pre + "n_out=" + std::to_string(L.nOut);
    s += pre + "capacity=" + std::to_string(L.capacity);
    s += pre + "tiles=" + detail::join(L.tiles);
    s += pre + "starts=" + detail::join(L.starts);
    s += pre + "row_tiles=" + detail::join(L.rowTiles);
  }
  return s;
}

// Throws unless the plan's layer l matches the given tensor dimensions.
inline void checkLayer(const Plan& p, size_t l, long long nIn, long long nOut, long long batch,
                       long long capacity) {
  if (l >= p.layers.size()) {
    detail::fail("the op needs layer " + std::to_string(l) + " but the plan has " +
                 std::to_string(p.layers.size()));
  }
  const LayerPlan& L = p.layers[l];
  auto same = [&](const char* what, long long planned, long long actual) {
    if (planned != actual) {
      detail::fail("layer " + std::to_string(l) + " was planned for " + what + " = " +
                   std::to_string(planned) + " but the tensors have " + std::to_string(actual));
    }
  };
  if (nIn >= 0) same("n_in", L.nIn, nIn);
  same("n_out", L.nOut, nOut);
  same("batch", p.batch, batch);
  if (capacity >= 0) same("capacity", L.capacity, capacity);
}

}  // namespace plan
}  // namespace snn
