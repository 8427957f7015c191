/*
 * t-mac/tmac_gemm_wrapper.h for a T-MAC kernel kit written by tmac-convert (no TVM).
 *
 * The interface T-MAC's llama.cpp fork uses (ggml/src/ggml-tmac.cpp): TMAC::kAllocAlignment,
 * TMAC::TMACGeMMConfig and TMAC::TMACGeMMWrapper<T> with get_kcfg, llama_cpp_init,
 * llama_cpp_compute, set_workspace and set_num_threads.  The kernels are the kit's kernels.cc
 * (t-mac/kernels.h); kcfg.ini is read from $TMAC_KCFG_FILE, else from the path compiled in as
 * TMAC_KCFG_FILE (the kit's lib/kcfg.ini).
 *
 * kcfg.ini and kernels.cc are one unit (T-MAC issue #66): when the kcfg is loaded, and again for
 * every section the runtime asks for, the wrapper checks that the section describes exactly the
 * shape the kernels were generated for (bits, bm, kfactor, group_size, lut_scales_size,
 * scales_size, n_tile_num, simd_n_in/out) and stops the process with LOG(FATAL), naming the tensor
 * shape and each differing field, when it does not.
 */
#ifndef TMAC_KIT_TMAC_GEMM_WRAPPER_H_
#define TMAC_KIT_TMAC_GEMM_WRAPPER_H_

#ifdef TMAC_USE_TVM_THREADPOOL
#error "this T-MAC kit has no TVM runtime: configure the fork without GGML_TMAC_TVM_THREADPOOL"
#endif

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "dmlc/logging.h"
#include "t-mac/INIReader.h"
#include "t-mac/kernels.h"

namespace TMAC {

constexpr size_t kAllocAlignment = 64;

struct TMACGeMMConfig {
  int bm;
  int simd_n_in;
  int simd_n_out;
  int kfactor;
  int group_size;
  int lut_scales_size;
  int scales_size;
  int n_tile_num;
};

// $TMAC_KCFG_FILE, else the kit's kcfg.ini (compile definition TMAC_KCFG_FILE, a string literal).
inline std::string get_kcfg_file(const std::string& kcfg_file) {
  if (!kcfg_file.empty()) return kcfg_file;
  if (const char* env = std::getenv("TMAC_KCFG_FILE")) return env;
#ifdef TMAC_KCFG_FILE
  return TMAC_KCFG_FILE;
#else
  LOG(FATAL) << "T-MAC kit: set the TMAC_KCFG_FILE environment variable to the kit's lib/kcfg.ini";
  return "";
#endif
}

namespace kit {

inline std::string shape_text(int m0, int k, int bits) {
  std::ostringstream s;
  s << "tensor shape [" << m0 << ", " << k << "] (M0 x K), " << bits << "-bit";
  return s.str();
}

inline std::string section_name(int threads, int m0, int k, int n, int bits) {
  std::ostringstream s;
  s << "qgemm_lut_t" << threads << "_int8_m" << m0 * bits << "_k" << k << "_n" << n << "_b" << bits;
  return s.str();
}

inline TMACGeMMConfig read_section(const INIReader& r, const std::string& section) {
  return {
      (int)r.GetInteger(section, "bm", 0),
      (int)r.GetInteger(section, "simd_n_in", 0),
      (int)r.GetInteger(section, "simd_n_out", 0),
      (int)r.GetInteger(section, "kfactor", 0),
      (int)r.GetInteger(section, "group_size", 0),
      (int)r.GetInteger(section, "lut_scales_size", 0),
      (int)r.GetInteger(section, "scales_size", 0),
      (int)r.GetInteger(section, "n_tile_num", 0),
  };
}

// "field = kcfg value (kernels: value)" for each field that differs; empty when the section fits.
inline std::string differences(const TMACGeMMConfig& c, const tmac_kit_shape& s) {
  std::ostringstream out;
  const struct {
    const char* name;
    int got, want;
  } fields[] = {
      {"bm", c.bm, s.bm},
      {"kfactor", c.kfactor, s.kfactor},
      {"group_size", c.group_size, s.group_size},
      {"lut_scales_size", c.lut_scales_size, s.lut_scales_size},
      {"scales_size", c.scales_size, s.scales_size},
      {"n_tile_num", c.n_tile_num, s.n_tile_num},
      {"simd_n_in", c.simd_n_in, s.simd_n_in},
      {"simd_n_out", c.simd_n_out, s.simd_n_out},
  };
  for (const auto& f : fields) {
    if (f.got != f.want) {
      out << (out.tellp() > 0 ? "; " : "") << f.name << " = " << f.got << " (the kernels were generated for "
          << f.want << ")";
    }
  }
  return out.str();
}

inline const char* advice() {
  return ". kcfg.ini and kernels.cc must come from the same `tmac-convert kit` run for this model "
         "(T-MAC issue #66); regenerate the kit and rebuild, or unset TMAC_KCFG_FILE";
}

}  // namespace kit

template <typename T, int g = 4>
class TMACGeMMWrapper {
 public:
  TMACGeMMWrapper(int n_threads, int act_group_size, const std::string& kcfg_file, const std::string& library_file)
      : _n_threads(0),
        _act_group_size(act_group_size),
        _kcfg_path(get_kcfg_file(kcfg_file)),
        _reader(_kcfg_path) {
    (void)n_threads;
    (void)library_file;
    if (_reader.ParseError() < 0) {
      LOG(WARNING) << "T-MAC kit: cannot read kcfg file " << _kcfg_path << "; T-MAC tensors will not load";
      return;
    }
    if (_reader.ParseError() > 0) {
      LOG(FATAL) << "T-MAC kit: kcfg file " << _kcfg_path << " has a syntax error on line " << _reader.ParseError();
    }
    check_loaded_sections();
  }

  TMACGeMMWrapper() : TMACGeMMWrapper(1, 32, "", "") {}

  // The kit's kernels are single-threaded calls; ggml shares the tiles out among its own threads.
  void set_num_threads(int n_threads) { (void)n_threads; }

  // One activation row B [K] (tmac_float_type) -> qlut, lut_scales, lut_biases.  M = M0.
  void llama_cpp_init(void* B, void* qlut, void* lut_scales, void* lut_biases, int M, int K, int N, int bits) {
    const int ret = preprocessor_int8(M * bits, K, N, bits, B, lut_scales, lut_biases, qlut);
    if (ret != 0) {
      LOG(FATAL) << "T-MAC kit: no preprocessor for m=" << M * bits << " k=" << K << " n=" << N << " b=" << bits
                 << " (" << kit::shape_text(M, K, bits) << ") in " << tmac_kit_description() << " (error " << ret
                 << ")";
    }
  }

  // One tile of M = bm/bits outputs times one row: C [M] (tmac_float_type) is overwritten.
  void llama_cpp_compute(void* A, void* scales, void* qlut, void* lut_scales, void* lut_biases, void* C, int M,
                         int K, int N, int bits) {
    const int ret = qgemm_lut_int8(M * bits, K, N, bits, A, qlut, scales, lut_scales, lut_biases, C);
    if (ret != 0) {
      LOG(FATAL) << "T-MAC kit: no tile kernel for m=" << M * bits << " k=" << K << " n=" << N << " b=" << bits
                 << " in " << tmac_kit_description() << " (error " << ret << ")";
    }
  }

  // The kcfg section of weight [M, K] (M = M0) at `bits`, checked against the kernels.
  TMACGeMMConfig get_kcfg(int M, int K, int N, int bits) {
    std::lock_guard<std::mutex> lock(_m);
    const auto key = std::make_tuple(M, K, N, bits);
    const auto hit = _cache.find(key);
    if (hit != _cache.end()) return hit->second;

    std::string section;
    for (int threads : {1, 4, 8, 16}) {
      const std::string name = kit::section_name(threads, M, K, N, bits);
      if (_reader.Sections().count(name) > 0) {
        section = name;
        break;
      }
    }
    const tmac_kit_shape* shape = tmac_kit_find(M, K, bits);
    if (section.empty()) {
      std::ostringstream why;
      why << "T-MAC kit: kcfg file " << _kcfg_path << " has no section " << kit::section_name(1, M, K, N, bits)
          << " for " << kit::shape_text(M, K, bits);
      if (_reader.ParseError() < 0) why << " (the file cannot be read)";
      const std::string near = same_m_k_sections(M * bits, K, bits);
      if (!near.empty()) why << "; it has " << near << ": same m and k but other bits (field bits differs)";
      if (shape == nullptr) {
        why << ", and the kernels (" << tmac_kit_description() << ") were not generated for it either: this kit was "
            << "written for another model; run `tmac-convert kit` for the model you load";
      } else {
        why << kit::advice();
      }
      LOG(FATAL) << why.str();
    }
    const TMACGeMMConfig cfg = kit::read_section(_reader, section);
    if (shape == nullptr) {
      LOG(FATAL) << "T-MAC kit: kcfg section " << section << " in " << _kcfg_path << " describes "
                 << kit::shape_text(M, K, bits) << ", but the kernels (" << tmac_kit_description()
                 << ") were not generated for it: this kit was written for another model; run `tmac-convert kit` "
                 << "for the model you load";
    }
    check(section, *shape, cfg);
    _cache[key] = cfg;
    return cfg;
  }

  void set_workspace(int maxK, int maxN) {
    free_workspace();
    const size_t n_qlut = (size_t)maxN * maxK / g * (1 << g);
    const size_t n_lut = (size_t)maxN * maxK / 4;  // at most one scale and one bias per group of 4
    _qlut = aligned(n_qlut * sizeof(int8_t));
    _lut_scales = aligned(n_lut * sizeof(T));
    _lut_biases = aligned(n_lut * sizeof(T));
    _allocated = true;
  }

  ~TMACGeMMWrapper() { free_workspace(); }

 private:
  // Every section of the loaded kcfg that names a shape the kernels serve must describe it exactly.
  void check_loaded_sections() {
    for (const std::string& section : _reader.Sections()) {
      int t = 0, m = 0, k = 0, n = 0, b = 0;
      char tail = 0;
      if (std::sscanf(section.c_str(), "qgemm_lut_t%d_int8_m%d_k%d_n%d_b%d%c", &t, &m, &k, &n, &b, &tail) != 5) {
        continue;
      }
      if (b < 1 || b > 4 || m % b != 0 || n != 1) continue;
      const tmac_kit_shape* shape = tmac_kit_find(m / b, k, b);
      if (shape != nullptr) check(section, *shape, kit::read_section(_reader, section));
    }
  }

  void check(const std::string& section, const tmac_kit_shape& shape, const TMACGeMMConfig& cfg) const {
    const std::string diff = kit::differences(cfg, shape);
    if (!diff.empty()) {
      LOG(FATAL) << "T-MAC kit: kcfg section " << section << " in " << _kcfg_path << " does not describe "
                 << kit::shape_text(shape.m0, shape.k, shape.bits) << " as the kernels (" << tmac_kit_description()
                 << ") were generated for it: " << diff << kit::advice();
    }
  }

  std::string same_m_k_sections(int m, int k, int bits) const {
    std::string out;
    for (const std::string& section : _reader.Sections()) {
      int t = 0, mm = 0, kk = 0, n = 0, b = 0;
      if (std::sscanf(section.c_str(), "qgemm_lut_t%d_int8_m%d_k%d_n%d_b%d", &t, &mm, &kk, &n, &b) == 5 && mm == m &&
          kk == k && b != bits) {
        out += (out.empty() ? "" : ", ") + section;
      }
    }
    return out;
  }

  static void* aligned(size_t bytes) {
    void* p = nullptr;
#if defined(_WIN32)
    p = _aligned_malloc(bytes, kAllocAlignment);
#else
    if (posix_memalign(&p, kAllocAlignment, bytes) != 0) p = nullptr;
#endif
    if (p == nullptr) LOG(FATAL) << "T-MAC kit: cannot allocate " << bytes << " bytes of workspace";
    return p;
  }

  void free_workspace() {
    if (!_allocated) return;
#if defined(_WIN32)
    _aligned_free(_qlut), _aligned_free(_lut_scales), _aligned_free(_lut_biases);
#else
    std::free(_qlut), std::free(_lut_scales), std::free(_lut_biases);
#endif
    _allocated = false;
  }

  int _n_threads;
  int _act_group_size;
  std::string _kcfg_path;
  INIReader _reader;
  std::mutex _m;
  std::map<std::tuple<int, int, int, int>, TMACGeMMConfig> _cache;

  void* _qlut = nullptr;
  void* _lut_scales = nullptr;
  void* _lut_biases = nullptr;
  bool _allocated = false;
};

}  // namespace TMAC

#endif  // TMAC_KIT_TMAC_GEMM_WRAPPER_H_
