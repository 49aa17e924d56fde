// fd_check.h: central differences of an objective f along one direction, checked against the
// analytic directional derivative with a bound derived from the arithmetic, not guessed.
// Included by the gradient tests (test_balance, test_mtp, test_kernels_backward).
//
// With h the step, fd(h) = (f(h) - f(-h)) / 2h = f'(0) + h^2 f'''/6 + O(h^4), and each computed
// f carries a rounding error of about eps |f| (eps of the dtype the objective is computed in:
// FLT_EPSILON for the float32 model, DBL_EPSILON for the double references; the caller adds to
// |f| what the rounding of the shifted inputs w + t u can move f by), so
//   |fd(h) - f'(0)| <= eps |f| / h         (rounding: two values of f, divided by 2h)
//                    + |fd(2h) - fd(h)|   (truncation: fd(2h) - fd(h) = h^2 f'''/2 + h^4 f'''''/8
//                                          + ..., three times the h^2 |f'''| / 6 of fd(h): the
//                                          margin covers the h^4 term at the larger steps)
// and the analytic value <g, u> computed from a gradient g in that dtype is off by at most
// kGradientRounding eps sum_i |g_i u_i| (each entry the sum of a few hundred products through the
// backward chain; sqrt of that count rounded up to a power of two, as test_kernels' bounds).
// The rounding term is a worst case: where rounding dominates (a 3e-5 gradient of a 0.2
// objective), the measured error of the computed f was 0.02 - 0.13 eps |f|. Over all the checks
// of test_balance and test_mtp (Release and Debug+ASan builds, OpenBLAS cores SkylakeX, Haswell
// and Prescott, DSMOE_MAX_ISA native and avx2) |fd - analytic| stayed below 0.35 of the bound.
//
// The step: rounding falls as 1/h and truncation grows as h^2; for inputs of scale s, |f'''| ~
// |f| / s^3 and the optimum h = cbrt(3 eps |f| / |f'''|) is about s cbrt(eps). fd_steps gives
// 4, 2, 1, ..., 1/16 times that (the small ones for routings close to a tie); central_difference
// takes the largest at which f(+-h) and f(+-2h) stay on the same smooth piece (the same routing),
// as the measured truncation term says what a large step costs. A failure prints measured vs
// allowed.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace dsmoe {
namespace {

constexpr double kGradientRounding = 32;

// f(t): the objective at w + t u, or nullopt where it left the smooth piece around t = 0 (the
// routing changed).
using FdObjective = std::function<std::optional<double>(double t)>;

struct FdCheck {
  double step = 0;               // h
  double fd = 0;                 // (f(h) - f(-h)) / 2h
  double fd_wide = 0;            // (f(2h) - f(-2h)) / 4h
  double analytic = 0;           // <g, u>
  double rounding = 0;           // eps |f| / h
  double truncation = 0;         // |fd_wide - fd|
  double analytic_rounding = 0;  // kGradientRounding eps sum |g_i u_i|

  double error() const { return std::fabs(fd - analytic); }
  double allowed() const { return rounding + truncation + analytic_rounding; }
  bool holds() const { return error() <= allowed(); }
};

[[maybe_unused]] std::ostream& operator<<(std::ostream& os, const FdCheck& c) {
  return os << fmt::format(
             "central difference {:.7g}, analytic {:.7g}: |difference| {:.3g}, allowed {:.3g} "
             "({:.2f} of it) = rounding eps|f|/h {:.3g} + truncation |fd(2h)-fd(h)| {:.3g} + "
             "analytic rounding {:.3g}, at h = {:.3g}",
             c.fd, c.analytic, c.error(), c.allowed(), c.error() / c.allowed(), c.rounding,
             c.truncation, c.analytic_rounding, c.step);
}

// The check passes, or fails naming `what` with measured vs allowed. DSMOE_FD_LOG=1 prints
// every check (how close each comes to its bound, e.g. on a new CPU).
[[maybe_unused]] void expect_holds(const FdCheck& c, const std::string& what) {
  EXPECT_TRUE(c.holds()) << what << ": " << c;
  if (std::getenv("DSMOE_FD_LOG") != nullptr) std::cout << "fd check " << what << ": " << c << "\n";
}

// Steps around the optimum for inputs of scale `scale`, largest first (each half the previous,
// so that one step's 2h is the previous step's h and its values are reused).
[[maybe_unused]] std::vector<double> fd_steps(double eps, double scale = 1.0) {
  const double h_opt = scale * std::cbrt(eps);
  return {4 * h_opt, 2 * h_opt, h_opt, h_opt / 2, h_opt / 4, h_opt / 8, h_opt / 16};
}

// The check at the largest step of `steps` whose f(+-h), f(+-2h) stay on the smooth piece;
// nullopt when none does. f_magnitude: |f| (or the sum of the magnitudes of the objectives a
// difference of objectives is made of); analytic_magnitude: sum |g_i u_i|.
[[maybe_unused]] std::optional<FdCheck> central_difference(const FdObjective& f, double eps,
                                                           double f_magnitude, double analytic,
                                                           double analytic_magnitude,
                                                           const std::vector<double>& steps) {
  std::map<double, std::optional<double>> values;
  auto at = [&](double t) {
    auto it = values.find(t);
    if (it == values.end()) it = values.emplace(t, f(t)).first;
    return it->second;
  };
  for (double h : steps) {
    const std::optional<double> wide_plus = at(2 * h), wide_minus = at(-2 * h);
    if (!wide_plus || !wide_minus) continue;
    const std::optional<double> plus = at(h), minus = at(-h);
    if (!plus || !minus) continue;
    FdCheck c;
    c.step = h;
    c.fd = (*plus - *minus) / (2 * h);
    c.fd_wide = (*wide_plus - *wide_minus) / (4 * h);
    c.analytic = analytic;
    c.rounding = eps * f_magnitude / h;
    c.truncation = std::fabs(c.fd_wide - c.fd);
    c.analytic_rounding = kGradientRounding * eps * analytic_magnitude;
    return c;
  }
  return std::nullopt;
}

// <g, d> and sum |g_i d_i| (the magnitude its rounding scales with), in double.
inline std::pair<double, double> dot_and_magnitude(const Tensor& g, const std::vector<float>& d) {
  double sum = 0.0, magnitude = 0.0;
  for (int64_t i = 0; i < g.numel(); i++) {
    const double term = static_cast<double>(g.data[i]) * d[i];
    sum += term;
    magnitude += std::fabs(term);
  }
  return {sum, magnitude};
}

}  // namespace
}  // namespace dsmoe
