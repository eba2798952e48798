// Event names and the latency histogram.
// (Part of the engine translation unit, src/engine.cpp.)

namespace taskq {

std::string_view to_string(event_kind k) noexcept {
  switch (k) {
    case event_kind::enqueued:
      return "enqueued";
    case event_kind::started:
      return "started";
    case event_kind::progress:
      return "progress";
    case event_kind::succeeded:
      return "succeeded";
    case event_kind::failed:
      return "failed";
    case event_kind::retry_scheduled:
      return "retry_scheduled";
    case event_kind::cancelled:
      return "cancelled";
    case event_kind::dropped:
      return "dropped";
  }
  return "unknown";
}

std::size_t histogram::bucket_of(std::uint64_t ns) noexcept {
  constexpr std::uint64_t sub = 1u << sub_bits;
  if (ns < sub) return static_cast<std::size_t>(ns);
  int msb = 63 - std::countl_zero(ns);
  int shift = msb - sub_bits;
  auto s = (ns >> shift) & (sub - 1);
  return static_cast<std::size_t>((msb - sub_bits + 1) * sub + s);
}

std::uint64_t histogram::upper_edge(std::size_t b) noexcept {
  constexpr std::size_t sub = 1u << sub_bits;
  if (b < sub) return b;
  int msb = static_cast<int>(b / sub) - 1 + sub_bits;
  std::uint64_t s = b % sub;
  int shift = msb - sub_bits;
  std::uint64_t lower = (sub + s) << shift;
  return lower + ((std::uint64_t{1} << shift) - 1);
}

void histogram::record(duration d) noexcept {
  auto ns = static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  counts_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
  total_.fetch_add(1, std::memory_order_relaxed);
  auto m = max_.load(std::memory_order_relaxed);
  while (ns > m && !max_.compare_exchange_weak(m, ns, std::memory_order_relaxed)) {
  }
}

std::uint64_t histogram::count() const noexcept {
  return total_.load(std::memory_order_relaxed);
}

duration histogram::quantile(double q) const noexcept {
  auto total = count();
  if (total == 0) return duration::zero();
  auto target = static_cast<std::uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * double(total)));
  target = std::max<std::uint64_t>(target, 1);
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < buckets; ++b) {
    seen += counts_[b].load(std::memory_order_relaxed);
    if (seen >= target) {
      auto edge = std::min(upper_edge(b), max_.load(std::memory_order_relaxed));
      return std::chrono::duration_cast<duration>(std::chrono::nanoseconds(edge));
    }
  }
  return max();
}

duration histogram::max() const noexcept {
  return std::chrono::duration_cast<duration>(
      std::chrono::nanoseconds(max_.load(std::memory_order_relaxed)));
}

latency_summary histogram::summary() const noexcept {
  return {count(), quantile(0.5), quantile(0.9), quantile(0.99), max()};
}

}  // namespace taskq
