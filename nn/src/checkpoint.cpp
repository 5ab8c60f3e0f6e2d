#include "dslens/nn/checkpoint.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "dslens/core/version.h"

namespace fs = std::filesystem;

namespace dslens::nn {
namespace checkpoint_detail {

constexpr int kFormatVersion = 1;

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string step_name(const char* stem, int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s_step%09lld.pt", stem, static_cast<long long>(step));
  return buf;
}

nlohmann::json archive_entry(const std::string& path) {
  return {{"file", fs::path(path).filename().string()},
          {"bytes", static_cast<int64_t>(fs::file_size(path))},
          {"fnv1a64", file_fnv1a64(path)}};
}

// Checks an archive entry of the sidecar against the file beside it; returns its absolute path.
std::string verify_archive(const fs::path& dir, const nlohmann::json& entry,
                           const std::string& what, const std::string& sidecar) {
  if (!entry.is_object() || !entry.contains("file") || !entry["file"].is_string()) {
    throw FileError("checkpoint sidecar '" + sidecar + "': no " + what + " archive entry");
  }
  const fs::path file = dir / entry["file"].get<std::string>();
  if (!fs::exists(file)) {
    throw FileError("checkpoint " + what + " archive '" + file.string() + "' named by '" + sidecar +
                    "' is missing");
  }
  if (entry.contains("bytes") && entry["bytes"].is_number_integer() &&
      entry["bytes"].get<int64_t>() != static_cast<int64_t>(fs::file_size(file))) {
    throw FileError("checkpoint " + what + " archive '" + file.string() + "' has " +
                    std::to_string(fs::file_size(file)) + " bytes but the sidecar '" + sidecar +
                    "' records " + std::to_string(entry["bytes"].get<int64_t>()) +
                    " (truncated or replaced)");
  }
  if (entry.contains("fnv1a64") && entry["fnv1a64"].is_string() &&
      entry["fnv1a64"].get<std::string>() != file_fnv1a64(file.string())) {
    throw FileError("checkpoint " + what + " archive '" + file.string() +
                    "' does not match the hash recorded in '" + sidecar +
                    "' (corrupt or replaced)");
  }
  return file.string();
}

std::string shape_text(const torch::Tensor& t) {
  return c10::str(t.sizes());
}

// Reads the tensors of `module` (recursively) from `archive`, checking names and shapes first.
void read_module(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                 const std::string& prefix, const std::string& file) {
  std::set<std::string> expected = {"training"};
  auto read_one = [&](const std::string& key, torch::Tensor& target, bool is_buffer) {
    expected.insert(key);
    torch::Tensor t;
    if (!archive.try_read(key, t, is_buffer) || !t.defined()) {
      throw FileError("checkpoint weights '" + file + "' lack tensor '" + prefix + key +
                      "' that the sidecar's architecture needs (weights and sidecar do not match)");
    }
    if (t.sizes() != target.sizes()) {
      throw FileError("checkpoint weights '" + file + "': tensor '" + prefix + key +
                      "' has shape " + shape_text(t) + " but the sidecar's architecture needs " +
                      shape_text(target) + " (weights and sidecar do not match)");
    }
    torch::NoGradGuard guard;
    target.copy_(t.to(target.device(), target.scalar_type()));
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) read_one(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) read_one(b.key(), b.value(), true);
  for (auto& child : module.named_children()) {
    expected.insert(child.key());
    torch::serialize::InputArchive sub;
    if (!archive.try_read(child.key(), sub)) {
      throw FileError("checkpoint weights '" + file + "' lack module '" + prefix + child.key() +
                      "' that the sidecar's architecture needs (weights and sidecar do not match)");
    }
    read_module(sub, *child.value(), prefix + child.key() + ".", file);
  }
  for (const auto& key : archive.keys()) {
    if (!expected.count(key)) {
      throw FileError("checkpoint weights '" + file + "' hold '" + prefix + key +
                      "' that the sidecar's architecture does not have (weights and sidecar do "
                      "not match)");
    }
  }
}

}  // namespace checkpoint_detail

std::string file_fnv1a64(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError("cannot read '" + path + "'");
  uint64_t h = 1469598103934665603ULL;
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = in.gcount();
    for (std::streamsize i = 0; i < n; ++i) {
      h ^= static_cast<unsigned char>(buf[static_cast<size_t>(i)]);
      h *= 1099511628211ULL;
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

void save_checkpoint(const std::string& dir, VaeImpl& vae, torch::optim::Optimizer* optimizer,
                     int64_t step, const nlohmann::json& data, const nlohmann::json& training) {
  using namespace checkpoint_detail;
  const fs::path folder(dir);
  if (!fs::is_directory(folder)) throw FileError("checkpoint folder '" + dir + "' does not exist");

  const std::string weights = (folder / step_name("vae", step)).string();
  write_file_atomically(weights, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    vae.save(archive);
    archive.save_to(tmp);
  });
  std::string opt_path;
  if (optimizer) {
    opt_path = (folder / step_name("optimizer", step)).string();
    write_file_atomically(opt_path, [&](const std::string& tmp) {
      torch::serialize::OutputArchive archive;
      optimizer->save(archive);
      archive.save_to(tmp);
    });
  }

  nlohmann::json tensors = nlohmann::json::object();
  for (const auto& p : vae.named_parameters()) tensors[p.key()] = p.value().sizes().vec();
  for (const auto& b : vae.named_buffers()) tensors[b.key()] = b.value().sizes().vec();
  nlohmann::json weights_entry = archive_entry(weights);
  weights_entry["tensors"] = tensors;
  weights_entry["parameters"] = vae.parameter_count();

  nlohmann::json sidecar = {
      {"format", kCheckpointFormat},
      {"format_version", kFormatVersion},
      {"dslens_version", dslens::version()},
      {"created_utc", utc_now()},
      {"step", step},
      {"architecture", vae.arch().to_json()},
      {"stamp_size", vae.arch().stamp_size},
      {"latent_dim", vae.arch().latent_dim},
      {"pixel_normalisation", vae.pixel_norm().to_json()},
      {"dtype", std::string(c10::toString(vae.options().dtype().toScalarType()))},
      {"weights", weights_entry},
      {"optimizer", optimizer ? archive_entry(opt_path) : nlohmann::json(nullptr)},
      {"data", data},
      {"training", training},
      {"usage",
       "decode(z [B, latent_dim] ~ N(0, I)) -> stamps [B, stamp_size, stamp_size] in data units: "
       "net(z) * pixel_normalisation.scale + pixel_normalisation.offset"}};
  write_text_atomically((folder / kCheckpointSidecar).string(), sidecar.dump(2) + "\n");

  // Older archives are no longer referenced: remove them.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = (name.rfind("vae_step", 0) == 0 || name.rfind("optimizer_step", 0) == 0) &&
                      entry.path().extension() == ".pt";
    if (ours && entry.path() != fs::path(weights) && entry.path() != fs::path(opt_path)) {
      fs::remove(entry.path(), ec);
    }
  }
  spdlog::debug("checkpoint at step {} written to {}", step, dir);
}

bool checkpoint_exists(const std::string& dir) {
  return fs::exists(fs::path(dir) / kCheckpointSidecar);
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  using namespace checkpoint_detail;
  fs::path sidecar_path(path);
  if (fs::is_directory(sidecar_path)) sidecar_path /= kCheckpointSidecar;
  const std::string sidecar = sidecar_path.string();
  if (!fs::exists(sidecar_path)) {
    throw FileError("no checkpoint sidecar '" + sidecar +
                    "' (not a VAE checkpoint, or the checkpoint was never completed)");
  }
  nlohmann::json j;
  {
    std::ifstream in(sidecar_path);
    if (!in) throw FileError("cannot read checkpoint sidecar '" + sidecar + "'");
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw FileError("checkpoint sidecar '" + sidecar + "' is not valid JSON: " + e.what());
    }
  }
  if (!j.is_object() || j.value("format", std::string()) != kCheckpointFormat) {
    throw FileError("'" + sidecar + "' is not a dslens VAE checkpoint sidecar (format != \"" +
                    kCheckpointFormat + "\")");
  }
  CheckpointMeta m;
  m.dir = fs::absolute(sidecar_path.parent_path()).lexically_normal().string();
  try {
    m.arch = VaeArch::from_json(j.at("architecture"));
    m.norm = PixelNorm::from_json(j.at("pixel_normalisation"));
    m.step = j.at("step").get<int64_t>();
    m.dtype = j.value("dtype", std::string("float32"));
    m.version = j.value("dslens_version", std::string());
  } catch (const nlohmann::json::exception& e) {
    throw FileError("checkpoint sidecar '" + sidecar + "' is incomplete: " + e.what());
  } catch (const InvalidArgument& e) {
    throw FileError("checkpoint sidecar '" + sidecar + "': " + e.what());
  }
  m.weights_file = verify_archive(m.dir, j.value("weights", nlohmann::json()), "weights", sidecar);
  if (j.contains("optimizer") && !j["optimizer"].is_null()) {
    m.optimizer_file = verify_archive(m.dir, j["optimizer"], "optimizer", sidecar);
  }
  m.data = j.value("data", nlohmann::json());
  m.training = j.value("training", nlohmann::json());
  m.sidecar = std::move(j);
  return m;
}

void load_weights(const CheckpointMeta& meta, VaeImpl& vae) {
  torch::serialize::InputArchive archive;
  try {
    // Onto the CPU first: a checkpoint written by a CUDA training run must load on a machine
    // without a GPU; read_module copies each tensor to the module's own device.
    archive.load_from(meta.weights_file, torch::Device(torch::kCPU));
  } catch (const c10::Error& e) {
    throw FileError("cannot read checkpoint weights '" + meta.weights_file +
                    "': " + e.what_without_backtrace());
  }
  checkpoint_detail::read_module(archive, vae, "", meta.weights_file);
  vae.set_pixel_norm(meta.norm);
}

void load_optimizer_state(const CheckpointMeta& meta, torch::optim::Optimizer& optimizer) {
  if (meta.optimizer_file.empty()) {
    throw FileError("checkpoint in '" + meta.dir +
                    "' has no optimizer state, so it cannot be resumed");
  }
  try {
    c10::optional<torch::Device> device;
    if (!optimizer.param_groups().empty() && !optimizer.param_groups()[0].params().empty()) {
      device = optimizer.param_groups()[0].params()[0].device();
    }
    torch::serialize::InputArchive archive;
    archive.load_from(meta.optimizer_file, device);
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    throw FileError("cannot read optimizer state '" + meta.optimizer_file +
                    "': " + e.what_without_backtrace());
  }
}

LoadedVae load_vae(const std::string& path, const Compute& compute) {
  LoadedVae out;
  out.meta = read_checkpoint_meta(path);
  out.vae = Vae(out.meta.arch, out.meta.norm);
  load_weights(out.meta, *out.vae);
  out.vae->to(compute.device, compute.dtype);
  out.vae->eval();
  // A loaded VAE is a fixed prior: gradients flow to z only, never into (or through) the weights.
  for (auto& p : out.vae->parameters()) p.requires_grad_(false);
  return out;
}

}  // namespace dslens::nn
