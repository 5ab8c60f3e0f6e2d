#include <ATen/Config.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "dslens/samplers/row_parallel.h"

using namespace dslens::samplers;

namespace {

// A log-density whose rows are G groups (group-major) with a different mean per group, as a
// batch of lenses is: a slice that mixed groups up would get other groups' means.
struct GroupedQuadratic {
  explicit GroupedQuadratic(int64_t g) : groups(g) {}
  int64_t groups;
  std::mutex m;
  std::vector<int64_t> call_rows;
  std::set<std::thread::id> threads;

  LogDensityValue operator()(const torch::Tensor& q) {
    {
      std::lock_guard<std::mutex> lock(m);
      call_rows.push_back(q.size(0));
      threads.insert(std::this_thread::get_id());
    }
    const int64_t per = q.size(0) / groups;
    const auto mu = torch::arange(groups, q.options()).repeat_interleave(per).unsqueeze(1) * 10.0;
    const auto d = q - mu, w = 1.0 + 0.1 * torch::arange(q.size(1), q.options());
    return {-0.5 * (w * d * d).sum(1), -w * d};
  }
};

}  // namespace

TEST(RowParallel, SlicesEveryGroupAndReassemblesTheRowsInOrder) {
  const int64_t groups = 3, rows = 5, dim = 4;
  torch::manual_seed(11);
  const auto q = torch::randn({groups * rows, dim}, torch::kFloat64) * 3.0;
  GroupedQuadratic direct{groups};
  const auto expected = direct(q);

  GroupedQuadratic sliced{groups};
  auto f = row_parallel([&sliced](const torch::Tensor& x) { return sliced(x); }, groups, 2);
  const auto got = f(q);
  EXPECT_TRUE(torch::equal(got.log_p, expected.log_p));
  EXPECT_TRUE(torch::equal(got.grad, expected.grad));
  // Two slices of 3 and 2 rows from every group, on two threads other than this one.
  ASSERT_EQ(sliced.call_rows.size(), 2u);
  EXPECT_EQ(sliced.call_rows[0] + sliced.call_rows[1], groups * rows);
  EXPECT_EQ(std::min(sliced.call_rows[0], sliced.call_rows[1]), groups * 2);
  EXPECT_EQ(sliced.threads.size(), 2u);
  EXPECT_EQ(sliced.threads.count(std::this_thread::get_id()), 0u);
}

TEST(RowParallel, OneThreadOrOneRowPerGroupCallsTheDensityAsItIs) {
  const auto q = torch::randn({6, 2}, torch::kFloat64);
  GroupedQuadratic one_thread{2};
  (void)row_parallel([&](const torch::Tensor& x) { return one_thread(x); }, 2, 1)(q);
  EXPECT_EQ(one_thread.call_rows, std::vector<int64_t>{6});

  GroupedQuadratic one_row{6};
  (void)row_parallel([&](const torch::Tensor& x) { return one_row(x); }, 6, 2)(q);
  EXPECT_EQ(one_row.call_rows, std::vector<int64_t>{6});
}

TEST(RowParallel, ASliceThatThrowsRethrowsOnTheCaller) {
  auto f = row_parallel(
      [](const torch::Tensor& x) -> LogDensityValue {
        if (x.size(0) == 1) throw std::out_of_range("slice of one row");
        return {torch::zeros({x.size(0)}, x.options()), torch::zeros_like(x)};
      },
      1, 2);
  EXPECT_THROW(f(torch::zeros({3, 2}, torch::kFloat64)), std::out_of_range);
  // The pool is still usable afterwards.
  EXPECT_EQ(f(torch::zeros({4, 2}, torch::kFloat64)).log_p.size(0), 4);
}

TEST(RowParallel, WorkersShareTheThreadsAndLeaveTheCallersCount) {
  const int before = at::get_num_threads();
  std::vector<int> inside;
  std::mutex m;
  // Records the intra-op thread count each slice runs with.
  const LogDensityFn record = [&](const torch::Tensor& x) -> LogDensityValue {
    std::lock_guard<std::mutex> lock(m);
    inside.push_back(at::get_num_threads());
    return {torch::zeros({x.size(0)}, x.options()), torch::zeros_like(x)};
  };
  auto f = row_parallel(record, 1, 2);
  (void)f(torch::zeros({4, 3}, torch::kFloat64));
#if AT_PARALLEL_OPENMP
  EXPECT_EQ(inside, (std::vector<int>{1, 1}));
#endif
  EXPECT_EQ(inside.size(), 2u);
  EXPECT_EQ(at::get_num_threads(), before);

  // Four threads and two rows: two slices of two intra-op threads each, then back to one.
  inside.clear();
  auto wide = row_parallel(record, 1, 4);
  (void)wide(torch::zeros({2, 3}, torch::kFloat64));
  (void)f(torch::zeros({4, 3}, torch::kFloat64));
#if AT_PARALLEL_OPENMP
  EXPECT_EQ(inside, (std::vector<int>{2, 2, 1, 1}));
#endif
  EXPECT_EQ(inside.size(), 4u);
  EXPECT_EQ(at::get_num_threads(), before);
}
