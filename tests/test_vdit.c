/* test_vdit.c - the spatio-temporal video DiT and the sgm engine (ldm_diffusion.h section 5)
   against PyTorch (tests/ref/vdit_ref.py: float64 references written from DiT, PixArt-alpha and
   sgm, hash weights rebuilt here with lt_hash_init):
     - one block of each adaLN variant alone: output, full gradients w.r.t. tokens, conditioning
       and every block parameter;
     - both adaLN variants (switch_adaln_layer): state-dict names and shapes, init (adaLN-Zero
       zeros, frozen pos_embed equal to the reference's 3-D sin-cos), forward, input gradient
       and every parameter gradient (hash projection and norm);
     - LoRA on attn.qkv: output, input gradient and the full gradient of every adapter;
     - sgm: the scalings, loss weightings, discretizations, DiscreteDenoiser quantization,
       Denoiser outputs around the tiny video DiT (EDM, Eps, V, discrete), StandardDiffusionLoss
       values (EDM l2 with and without offset noise, V l1, discrete eps/unit), EulerEDMSampler
       (plain, churn + CFG, single prompt, multi-prompt per-sample scales) and DDIM (eta 0, and
       eta 1 with CFG: checked against CompVis' alpha-space update) with fixed noise;
     - save / strict load round trip, a few AdamW steps on the EDM loss lower it;
     - the config table (defaults, YAML read, validation) and errors on bad input.
   The same checks run on the CUDA back end (the emulator build runs only those).
   Loads files, so it also runs under ASan/UBSan: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_diffusion.h"
#include "ldm_test.h"

#define FIX "../tests/fixtures/"

static ldm_vdit_config tiny(int single, int learn_sigma) {
    ldm_vdit_config c = ldm_vdit_config_default();
    c.num_frames = 4; c.height = 4; c.width = 6; c.patch_t = 2; c.patch_size = 2;
    c.in_channels = 8; c.out_channels = 4; c.hidden_size = 32; c.depth = 2; c.num_heads = 2; c.mlp_ratio = 4.0f;
    c.learn_sigma = learn_sigma; c.switch_adaln_layer = single;
    return c;
}

/* got vs fixture entry `key`, tolerance atol = rel * max|want| and rtol = rel */
static void cmp(ldm_ctx *ctx, ldm_weights *fx, const char *key, const char *name, const float *got, long n, double rel) {
    lt_close_fx(ctx, fx, key, name, got, n, rel, rel);
}
static void cmp_t(ldm_ctx *ctx, ldm_weights *fx, const char *key, const char *name, const ldm_tensor *t, int grad, double rel) {
    lt_close_fx_t(ctx, fx, key, name, t, grad, rel, rel);
}
static const char *no_prefix = "";   /* the vdit's state-dict names have none */

/* blocks.0 alone (ldm__dit_block_forward, the block shared with the image DiT): output and full
   gradients w.r.t. tokens, conditioning and every block parameter, for both adaLN variants. */
static void test_block(ldm_ctx *ctx, const char *tag, int single) {
    char path[128], name[200], key[200];
    snprintf(path, sizeof path, FIX "vdit_block_%s.safetensors", tag);
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, path)) { lt_report(0, tag, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    ldm_vdit_config cfg = tiny(single, 0);
    ldm_vdit *m;
    if (ldm_vdit_create(ctx, &m, &cfg)) { lt_report(0, tag, "create: %s", ldm_ctx_error(ctx)); ldm_weights_close(fx); return; }
    ldm_nn_params *P = ldm_vdit_params(m);
    lt_hash_params(ctx, P, NULL, 0.0f);
    ldm_step_reset(ctx);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *c = lt_tensor(ctx, fx, "c");
    x->requires_grad = 1;
    c->requires_grad = 1;
    /* adaLN-Zero blocks take SiLU(c) (adaLN_modulation.0 is the SiLU); adaLN-single ones t_block's output */
    ldm_tensor *out = ldm__dit_block_forward(ctx, &m->k.blk[0], m->k.heads, x, single ? c : ldm_silu(ctx, c));
    int ok = out && lt_backward_hash(ctx, out);
    snprintf(name, sizeof name, "vdit block (%s) forward", tag);
    cmp_t(ctx, fx, "out", name, out, 0, 1e-5);
    if (ok) {
        snprintf(name, sizeof name, "vdit block (%s) grad tokens", tag);
        cmp_t(ctx, fx, "x_grad", name, x, 1, 1e-5);
        snprintf(name, sizeof name, "vdit block (%s) grad conditioning", tag);
        cmp_t(ctx, fx, "c_grad", name, c, 1, 1e-5);
        int n = 0;
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            if (strncmp(e->name, "blocks.0.", 9) != 0) continue;
            snprintf(key, sizeof key, "grad.%s", e->name);
            snprintf(name, sizeof name, "vdit block (%s) grad %s", tag, e->name + 9);
            cmp_t(ctx, fx, key, name, e->t, 1, 1e-5);
            n++;
        }
        snprintf(name, sizeof name, "vdit block (%s): every block parameter checked", tag);
        lt_report(n == (single ? 9 : 10), name, "%d parameters", n);
    } else lt_report(0, tag, "backward: %s", ldm_ctx_error(ctx));
    ldm_step_reset(ctx);
    ldm_vdit_destroy(m);
    ldm_weights_close(fx);
}

static void test_model(ldm_ctx *ctx, const char *tag, int single, int learn_sigma) {
    char path[128], name[160];
    snprintf(path, sizeof path, FIX "vdit_%s.safetensors", tag);
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, path)) { lt_report(0, tag, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    ldm_vdit_config cfg = tiny(single, learn_sigma);
    ldm_vdit *m;
    if (ldm_vdit_create(ctx, &m, &cfg)) { lt_report(0, tag, "create: %s", ldm_ctx_error(ctx)); ldm_weights_close(fx); return; }
    ldm_nn_params *P = ldm_vdit_params(m);
    snprintf(name, sizeof name, "vdit_%s", tag);
    lt_check_names(fx, name, "shape.", &P, &no_prefix, 1);
    { /* init: adaLN-Zero / the zero final linear; pos_embed frozen and equal to the reference's */
        int zero = 1;
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            if (!strstr(e->name, "adaLN_modulation") && !strstr(e->name, "final_layer.linear")) continue;
            const float *h = lt_h(ctx, e->t, 0);
            for (int64_t k = 0; h && k < e->t->numel; k++) zero = zero && h[k] == 0.0f;
        }
        snprintf(name, sizeof name, "vdit_%s zero-initialised modulations and final linear", tag);
        LT_CHECK(zero, name);
        ldm_tensor *pe = ldm_nn_find(P, "pos_embed");
        snprintf(name, sizeof name, "vdit_%s pos_embed frozen", tag);
        LT_CHECK(pe && !pe->requires_grad && ldm_nn_numel(P, "pos_embed", 1) == 0, name);
        snprintf(name, sizeof name, "vdit_%s 3-D sin-cos pos_embed", tag);
        cmp_t(ctx, fx, "pos_embed", name, pe, 0, 1e-6);
    }
    lt_hash_params(ctx, P, NULL, 0.0f);
    ldm_step_reset(ctx);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *t = lt_tensor(ctx, fx, "t");
    x->requires_grad = 1;
    ldm_tensor *out = ldm_vdit_forward(ctx, m, x, t);
    int ok = out && lt_backward_hash(ctx, out);
    snprintf(name, sizeof name, "vdit_%s forward", tag);
    cmp_t(ctx, fx, "out", name, out, 0, 1e-5);
    if (ok) {
        snprintf(name, sizeof name, "vdit_%s grad x", tag);
        cmp_t(ctx, fx, "x_grad", name, x, 1, 1e-4);
        snprintf(name, sizeof name, "vdit_%s", tag);
        lt_check_grads(ctx, fx, name, "gproj.", &P, &no_prefix, 1, NULL);
    } else lt_report(0, tag, "backward: %s", ldm_ctx_error(ctx));
    ldm_step_reset(ctx);
    ldm_vdit_destroy(m);
    ldm_weights_close(fx);
}

static void test_lora(ldm_ctx *ctx) {
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, FIX "vdit_lora.safetensors")) { lt_report(0, "vdit lora", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    ldm_vdit_config cfg = tiny(0, 0);
    ldm_vdit *m;
    ldm_nn_lora *L = NULL;
    const char *tg[1] = {"attn.qkv"};
    ldm_nn_lora_config lc;
    memset(&lc, 0, sizeof lc);
    lc.r = 4; lc.alpha = 8.0f; lc.n_targets = 1; lc.targets = tg;
    if (ldm_vdit_create(ctx, &m, &cfg)) { lt_report(0, "vdit lora", "create: %s", ldm_ctx_error(ctx)); ldm_weights_close(fx); return; }
    lt_hash_params(ctx, ldm_vdit_params(m), NULL, 0.0f);
    if (ldm_nn_lora_create(ctx, &L, ldm_vdit_params(m), &lc)) {
        lt_report(0, "vdit lora", "%s", ldm_ctx_error(ctx));
    } else {
        ldm_nn_params *A = ldm_nn_lora_params(L);
        LT_CHECK(ldm_nn_lora_count(L) == 2 && strcmp(ldm_nn_lora_module(L, 1), "blocks.1.attn.qkv") == 0, "vdit lora adapts blocks.N.attn.qkv");
        lt_hash_params(ctx, A, NULL, 0.0f);
        ldm_step_reset(ctx);
        ldm_tensor *x = lt_tensor(ctx, fx, "x"), *t = lt_tensor(ctx, fx, "t");
        x->requires_grad = 1;
        ldm_tensor *out = ldm_vdit_forward(ctx, m, x, t);
        int ok = out && lt_backward_hash(ctx, out);
        cmp_t(ctx, fx, "out", "vdit lora forward", out, 0, 1e-5);
        if (ok) {
            cmp_t(ctx, fx, "x_grad", "vdit lora grad x", x, 1, 1e-4);
            for (int i = 0; i < ldm_nn_count(A); i++) {
                const ldm_nn_entry *e = ldm_nn_entry_at(A, i);
                char key[200], name[240];
                snprintf(key, sizeof key, "grad.%s", e->name);
                snprintf(name, sizeof name, "vdit lora grad %s", e->name);
                cmp_t(ctx, fx, key, name, e->t, 1, 1e-5);
            }
            LT_CHECK(ldm_nn_numel(ldm_vdit_params(m), NULL, 1) == 0, "vdit lora: the base is frozen");
        } else lt_report(0, "vdit lora", "backward: %s", ldm_ctx_error(ctx));
    }
    ldm_step_reset(ctx);
    ldm_nn_lora_destroy(L);
    ldm_vdit_destroy(m);
    ldm_weights_close(fx);
}

static void test_sgm(ldm_ctx *ctx) {
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, FIX "vdit_sgm.safetensors")) { lt_report(0, "sgm", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    long ns;
    float *sig = lt_load(ctx, fx, "sigma", &ns), got[1024];
    { /* scalings and weightings */
        static const char *sn[4] = {"edm", "eps", "v", "v_edm_noise"}, *cn[4] = {"c_skip", "c_out", "c_in", "c_noise"};
        for (int k = 0; k < 4 && sig; k++) {
            ldm_sgm_denoiser_config dc = ldm_sgm_denoiser_config_default((ldm_sgm_scaling)k);
            for (int j = 0; j < 4; j++) {
                char key[64];
                for (long i = 0; i < ns; i++) { float c[4]; ldm_sgm_scalings(&dc, sig[i], c); got[i] = c[j]; }
                snprintf(key, sizeof key, "%s.%s", sn[k], cn[j]);
                cmp(ctx, fx, key, key, got, ns, 1e-6);
            }
        }
        ldm_sgm_denoiser_config dc = ldm_sgm_denoiser_config_default(LDM_SGM_EDM);
        dc.sigma_data = 1.0;
        for (long i = 0; i < ns; i++) { float c[4]; ldm_sgm_scalings(&dc, sig[i], c); got[i] = c[1]; }
        cmp(ctx, fx, "edm_sd1.c_out", "edm sigma_data 1 c_out", got, ns, 1e-6);
        static const char *wn[4] = {"w.unit", "w.edm", "w.v", "w.eps"};
        ldm_sgm_loss_config lc = ldm_sgm_loss_config_default();
        for (int k = 0; k < 4; k++) {
            lc.weighting = (ldm_sgm_weighting)k;
            for (long i = 0; i < ns; i++) got[i] = ldm_sgm_loss_weight(&lc, sig[i]);
            cmp(ctx, fx, wn[k], wn[k], got, ns, 1e-6);
        }
    }
    { /* discretizations */
        ldm_sgm_discretization e = ldm_sgm_discretization_default(LDM_SGM_DISC_EDM), l = ldm_sgm_discretization_default(LDM_SGM_DISC_LEGACY_DDPM);
        static float big[1001];
        ldm_sgm_discretize(ctx, &e, 7, 1, 0, got);
        cmp(ctx, fx, "disc.edm7", "EDMDiscretization 7 + zero", got, 8, 1e-6);
        ldm_sgm_discretization e2 = e;
        e2.sigma_min = 0.01; e2.sigma_max = 20.0; e2.rho = 3.0;
        ldm_sgm_discretize(ctx, &e2, 5, 1, 0, got);
        cmp(ctx, fx, "disc.edm5_custom", "EDMDiscretization rho 3, 0.01 .. 20", got, 6, 1e-6);
        ldm_sgm_discretize(ctx, &l, 5, 1, 0, got);
        cmp(ctx, fx, "disc.legacy5", "LegacyDDPMDiscretization 5 + zero", got, 6, 1e-6);
        ldm_sgm_discretize(ctx, &l, 1000, 0, 1, big);
        cmp(ctx, fx, "disc.legacy1000_flip", "LegacyDDPMDiscretization 1000 flipped", big, 1000, 1e-6);
        ldm_sgm_discretize(ctx, &l, 7, 0, 0, got);
        cmp(ctx, fx, "disc.legacy7_noflip_noappend", "LegacyDDPMDiscretization 7 without zero", got, 7, 1e-6);
        LT_CHECK(ldm_sgm_discretize(ctx, &l, 1001, 0, 0, big) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "num_timesteps"),
                 "LegacyDDPM: more sigmas than timesteps is an error");
        ldm_ctx_clear_error(ctx);
        e2.rho = 0;
        LT_CHECK(ldm_sgm_discretize(ctx, &e2, 5, 1, 0, got) == LDM_ERR_INVALID, "EDMDiscretization: rho 0 is an error");
        ldm_ctx_clear_error(ctx);
    }
    ldm_vdit_config cfg = tiny(1, 0);
    ldm_vdit *m = NULL;
    if (ldm_vdit_create(ctx, &m, &cfg)) { lt_report(0, "sgm network", "%s", ldm_ctx_error(ctx)); free(sig); ldm_weights_close(fx); return; }
    lt_hash_params(ctx, ldm_vdit_params(m), NULL, 0.0f);
    ldm_denoiser net = ldm_vdit_denoiser(m);
    ldm_sgm_denoiser dd, de, deps, dv, dvq;
    ldm_sgm_denoiser_config c = ldm_sgm_denoiser_config_default(LDM_SGM_EPS);
    c.discrete = 1;
    ldm_sgm_denoiser_init(ctx, &dd, &c, net);
    c = ldm_sgm_denoiser_config_default(LDM_SGM_V);
    c.discrete = 1; c.quantize_c_noise = 0;
    ldm_sgm_denoiser_init(ctx, &dvq, &c, net);
    c = ldm_sgm_denoiser_config_default(LDM_SGM_EDM);
    ldm_sgm_denoiser_init(ctx, &de, &c, net);
    c = ldm_sgm_denoiser_config_default(LDM_SGM_EPS);
    ldm_sgm_denoiser_init(ctx, &deps, &c, net);
    c = ldm_sgm_denoiser_config_default(LDM_SGM_V);
    ldm_sgm_denoiser_init(ctx, &dv, &c, net);
    if (ctx->status) { lt_report(0, "sgm denoisers", "%s", ldm_ctx_error(ctx)); goto done; }
    { /* DiscreteDenoiser's quantization */
        float q[5] = {0.03f, 0.5f, 1.0f, 3.7f, 14.6f}, gi[5], gs[5];
        for (int i = 0; i < 5; i++) { gi[i] = (float)ldm_sgm_sigma_to_idx(&dd, q[i]); gs[i] = dd.sigmas[(int)gi[i]]; }
        cmp(ctx, fx, "discrete.idx", "DiscreteDenoiser sigma_to_idx", gi, 5, 0);
        cmp(ctx, fx, "discrete.sigma_q", "DiscreteDenoiser quantized sigmas", gs, 5, 0);
    }
    ldm_step_reset(ctx);
    {
        ldm_tensor *x0 = lt_tensor(ctx, fx, "x0"), *noise = lt_tensor(ctx, fx, "noise"), *offset = lt_tensor(ctx, fx, "offset");
        ldm_cond cond;
        memset(&cond, 0, sizeof cond);
        cond.concat = lt_tensor(ctx, fx, "concat");
        float s2[2] = {0.7f, 12.0f};
        int prev = ldm_set_grad_enabled(ctx, 0);
        cmp_t(ctx, fx, "den.edm", "Denoiser EDMScaling around the video DiT", ldm_sgm_denoise(ctx, &de, x0, s2, &cond), 0, 1e-5);
        cmp_t(ctx, fx, "den.eps", "Denoiser EpsScaling", ldm_sgm_denoise(ctx, &deps, x0, s2, &cond), 0, 1e-5);
        cmp_t(ctx, fx, "den.v", "Denoiser VScaling", ldm_sgm_denoise(ctx, &dv, x0, s2, &cond), 0, 1e-5);
        cmp_t(ctx, fx, "den.discrete_eps", "DiscreteDenoiser EpsScaling (c_noise = index)", ldm_sgm_denoise(ctx, &dd, x0, s2, &cond), 0, 1e-5);
        cmp_t(ctx, fx, "den.discrete_v_noquant", "DiscreteDenoiser VScaling, quantize_c_noise off", ldm_sgm_denoise(ctx, &dvq, x0, s2, &cond), 0, 1e-5);
        ldm_set_grad_enabled(ctx, prev);
        /* StandardDiffusionLoss with the draws given */
        ldm_sgm_loss_config lc = ldm_sgm_loss_config_default();
        float sg[2] = {0, 0};
        ldm_tensor *l = ldm_sgm_loss(ctx, &lc, &de, x0, &cond, s2, noise, offset, sg);
        cmp_t(ctx, fx, "loss.edm_l2", "loss EDM weighting, l2", l, 0, 1e-5);
        LT_CHECK(sg[0] == s2[0] && sg[1] == s2[1], "loss: sigmas_out echoes the given sigmas");
        if (l) { /* the loss trains: gradients reach the network */
            ldm_nn_params *P = ldm_vdit_params(m);
            ldm_nn_zero_grad(ctx, P);
            int okb = ldm_backward(ctx, ldm_mean_all(ctx, l)) == LDM_OK;
            const float *g = lt_h(ctx, ldm_nn_find(P, "blocks.1.mlp.fc2.weight"), 1);
            double gs = 0;
            for (int64_t k = 0; g && k < ldm_nn_find(P, "blocks.1.mlp.fc2.weight")->numel; k++) gs += fabs(g[k]);
            LT_CHECK(okb && gs > 0, "loss backward reaches the network's parameters");
        }
        lc.offset_noise_level = 0.1;
        cmp_t(ctx, fx, "loss.edm_l2_offset", "loss EDM l2, offset_noise_level 0.1", ldm_sgm_loss(ctx, &lc, &de, x0, &cond, s2, noise, offset, NULL), 0, 1e-5);
        lc = ldm_sgm_loss_config_default();
        lc.weighting = LDM_SGM_W_V; lc.loss_type = LDM_LOSS_L1;
        cmp_t(ctx, fx, "loss.v_l1", "loss VScaling, VWeighting, l1", ldm_sgm_loss(ctx, &lc, &dv, x0, &cond, s2, noise, offset, NULL), 0, 1e-5);
        float sd[2] = {dd.sigmas[17], dd.sigmas[803]};
        lc = ldm_sgm_loss_config_default();
        lc.weighting = LDM_SGM_W_EPS;
        cmp_t(ctx, fx, "loss.discrete_eps_weighting", "loss DiscreteDenoiser eps, EpsWeighting", ldm_sgm_loss(ctx, &lc, &dd, x0, &cond, sd, noise, offset, NULL), 0, 1e-5);
        lc.weighting = LDM_SGM_W_UNIT;
        cmp_t(ctx, fx, "loss.discrete_unit_weighting", "loss DiscreteDenoiser eps, UnitWeighting", ldm_sgm_loss(ctx, &lc, &dd, x0, &cond, sd, noise, offset, NULL), 0, 1e-5);
        { /* sigma samplers: EDMSampling is lognormal, DiscreteSampling draws from the table */
            static float s[4096];
            lc = ldm_sgm_loss_config_default();
            ldm_sgm_sample_sigmas(ctx, &lc, 4096, s);
            double mu = 0, var = 0;
            for (int i = 0; i < 4096; i++) mu += log(s[i]) / 4096.0;
            for (int i = 0; i < 4096; i++) var += (log(s[i]) - mu) * (log(s[i]) - mu) / 4095.0;
            lt_report(fabs(mu + 1.2) < 0.06 && fabs(sqrt(var) - 1.2) < 0.05, "EDMSampling: log sigma ~ N(-1.2, 1.2^2)", "mean %g std %g", mu, sqrt(var));
            lc.sigma_sampling = LDM_SGM_SIGMA_DISCRETE;
            ldm_sgm_sample_sigmas(ctx, &lc, 4096, s);
            int in = 1;
            for (int i = 0; i < 4096; i++) in = in && dd.sigmas[ldm_sgm_sigma_to_idx(&dd, s[i])] == s[i];
            LT_CHECK(in && ctx->status == LDM_OK, "DiscreteSampling draws the discretization's sigmas");
        }
        /* samplers, 3 steps with fixed noise */
        ldm_tensor *xT = lt_tensor(ctx, fx, "xT"), *sn = lt_tensor(ctx, fx, "step_noise");
        ldm_cond uc, one;
        memset(&uc, 0, sizeof uc);
        uc.concat = ldm_zeros(ctx, ldm_shape_of(cond.concat));
        memset(&one, 0, sizeof one);
        one.concat = ldm_slice(ctx, cond.concat, 0, 0, 1);
        ldm_sgm_sampler_opts so = ldm_sgm_sampler_opts_default();
        so.num_steps = 3; so.cond = &cond; so.noise = sn;
        cmp_t(ctx, fx, "euler.plain", "EulerEDMSampler 3 steps", ldm_sgm_euler_edm_sample(ctx, &de, xT, &so), 0, 1e-5);
        so.uncond = &uc; so.guidance_scale = 2.5f; so.s_churn = 1.0f; so.s_tmin = 0.05f; so.s_tmax = 50.0f;
        cmp_t(ctx, fx, "euler.churn_cfg", "EulerEDMSampler s_churn, VanillaCFG 2.5", ldm_sgm_euler_edm_sample(ctx, &de, xT, &so), 0, 1e-5);
        so = ldm_sgm_sampler_opts_default();
        so.num_steps = 3; so.noise = sn; so.cond = &one; so.uncond = &uc; so.guidance_scale = 3.0f;
        cmp_t(ctx, fx, "euler.single_prompt", "EulerEDMSampler single prompt (one condition for the batch)", ldm_sgm_euler_edm_sample(ctx, &de, xT, &so), 0, 1e-5);
        float gsc[2] = {1.5f, 4.0f};
        so.cond = &cond; so.guidance_scales = gsc;
        cmp_t(ctx, fx, "euler.multi_prompt", "EulerEDMSampler multi-prompt, per-sample scales", ldm_sgm_euler_edm_sample(ctx, &de, xT, &so), 0, 1e-5);
        so = ldm_sgm_sampler_opts_default();
        so.num_steps = 3; so.noise = sn; so.cond = &cond; so.disc = ldm_sgm_discretization_default(LDM_SGM_DISC_LEGACY_DDPM);
        cmp_t(ctx, fx, "ddim.eta0", "DDIM (LegacyDDPM, DiscreteDenoiser eps) eta 0", ldm_sgm_ddim_sample(ctx, &dd, xT, &so), 0, 1e-5);
        so.eta = 1.0; so.uncond = &uc; so.guidance_scale = 2.0f;
        cmp_t(ctx, fx, "ddim.eta1_cfg", "DDIM eta 1 with CFG 2.0 = CompVis' alpha-space update", ldm_sgm_ddim_sample(ctx, &dd, xT, &so), 0, 1e-5);
        /* bad input: errors, not crashes */
        float bad[2] = {0.5f, 0.0f};
        LT_CHECK(!ldm_sgm_denoise(ctx, &de, x0, bad, &cond) && strstr(ldm_ctx_error(ctx), "sigma[1]"), "sgm: sigma 0 is an error naming the sample");
        ldm_ctx_clear_error(ctx);
        ldm_cond three;
        memset(&three, 0, sizeof three);
        ldm_tensor *parts[3];
        parts[0] = cond.concat; parts[1] = parts[2] = one.concat;
        three.concat = ldm_concat(ctx, 3, parts, 0);
        so.cond = &three;
        LT_CHECK(!ldm_sgm_ddim_sample(ctx, &dd, xT, &so) && strstr(ldm_ctx_error(ctx), "cond.concat has batch 4"), "sgm sampler: a condition batch that is neither 1 nor B is an error");
        ldm_ctx_clear_error(ctx);
        so.cond = &cond; so.eta = 1.5;
        LT_CHECK(!ldm_sgm_ddim_sample(ctx, &dd, xT, &so) && strstr(ldm_ctx_error(ctx), "eta"), "DDIM: eta outside [0, 1] is an error");
        ldm_ctx_clear_error(ctx);
        so.eta = 0.5; so.num_steps = 5;   /* step 3 of 5 needs a 4th noise slice */
        LT_CHECK(!ldm_sgm_ddim_sample(ctx, &dd, xT, &so) && strstr(ldm_ctx_error(ctx), "opts.noise has 3 slices"), "sgm sampler: too few noise slices is an error");
        ldm_ctx_clear_error(ctx);
        lc = ldm_sgm_loss_config_default();
        LT_CHECK(!ldm_sgm_loss(ctx, &lc, &de, x0, &cond, s2, ldm_slice(ctx, noise, 2, 0, 2), NULL, NULL) && strstr(ldm_ctx_error(ctx), "noise [2, 4, 2, 4, 6]"),
                 "loss: noise of another shape is an error");
        ldm_ctx_clear_error(ctx);
        ldm_tensor *wrong = ldm_slice(ctx, x0, 2, 0, 2);
        LT_CHECK(!ldm_sgm_denoise(ctx, &de, wrong, s2, NULL) && strstr(ldm_ctx_error(ctx), "VideoDiT: x"), "VideoDiT: a latent of the wrong size is an error");
        ldm_ctx_clear_error(ctx);
    }
done:
    ldm_step_reset(ctx);
    ldm_sgm_denoiser_free(&dd); ldm_sgm_denoiser_free(&dvq); ldm_sgm_denoiser_free(&de); ldm_sgm_denoiser_free(&deps); ldm_sgm_denoiser_free(&dv);
    ldm_vdit_destroy(m);
    free(sig);
    ldm_weights_close(fx);
}

/* save -> load into a fresh model (strict): the same output; a DiT-variant file refused by an
   adaLN-single model (names differ); then a few AdamW steps on the EDM loss lower it. */
static void test_save_train(ldm_ctx *ctx) {
    ldm_vdit_config cfg = tiny(1, 0);
    ldm_vdit *a = NULL, *b = NULL, *c = NULL;
    if (ldm_vdit_create(ctx, &a, &cfg) || ldm_vdit_create(ctx, &b, &cfg)) { lt_report(0, "vdit save/load", "%s", ldm_ctx_error(ctx)); goto out; }
    lt_hash_params(ctx, ldm_vdit_params(a), NULL, 0.0f);
    LT_CHECK(ldm_vdit_save(ctx, a, "vdit_saved.safetensors", LDM_F32, "model.diffusion_model.") == LDM_OK &&
             ldm_vdit_load(ctx, b, "vdit_saved.safetensors", "model.diffusion_model.", 1, NULL) == LDM_OK, "vdit save and strict load");
    ldm_ctx_clear_error(ctx);
    {
        ldm_tensor *x = ldm_randn(ctx, ldm_shape5(2, 8, 4, 4, 6));
        float tv[2] = {0.3f, -1.0f};
        ldm_tensor *t = ldm_from_host(ctx, ldm_shape1(2), tv);
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *ya = ldm_vdit_forward(ctx, a, x, t), *yb = ldm_vdit_forward(ctx, b, x, t);
        ldm_set_grad_enabled(ctx, prev);
        if (ya && yb) lt_close("vdit loaded model gives the saved model's output", lt_h(ctx, yb, 0), lt_h(ctx, ya, 0), (long)ya->numel, 0, 0);
        else lt_report(0, "vdit save/load forward", "%s", ldm_ctx_error(ctx));
        ldm_vdit_config c0 = tiny(0, 0);
        if (ldm_vdit_create(ctx, &c, &c0) == LDM_OK)
            LT_CHECK(ldm_vdit_load(ctx, c, "vdit_saved.safetensors", "model.diffusion_model.", 1, NULL) != LDM_OK &&
                     strstr(ldm_ctx_error(ctx), "adaLN_modulation"), "vdit: an adaLN-single file is refused by a DiT-variant model (strict)");
        ldm_ctx_clear_error(ctx);
    }
    ldm_step_reset(ctx);
    { /* training: 8 AdamW steps on fixed draws */
        ldm_sgm_denoiser den;
        ldm_sgm_denoiser_config dc = ldm_sgm_denoiser_config_default(LDM_SGM_EDM);
        ldm_sgm_loss_config lc = ldm_sgm_loss_config_default();
        ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, 2e-3);
        ldm_nn_optim *opt = NULL;
        ldm_sgm_denoiser_init(ctx, &den, &dc, ldm_vdit_denoiser(a));
        ldm_nn_optim_create(ctx, &opt, ldm_vdit_params(a), &oc, 0, NULL);
        ldm_mark keep = ldm_arena_mark(ctx);
        ldm_tensor *x0 = ldm_randn(ctx, ldm_shape5(2, 4, 4, 4, 6)), *n = ldm_randn(ctx, ldm_shape5(2, 4, 4, 4, 6));
        ldm_cond cond;
        memset(&cond, 0, sizeof cond);
        cond.concat = ldm_randn(ctx, ldm_shape5(2, 4, 4, 4, 6));
        float sg[2] = {0.4f, 2.5f}, first = 0, last = 0;
        for (int it = 0; it < 8 && !ctx->status; it++) {
            ldm_mark m = ldm_arena_mark(ctx);
            ldm_tensor *l = ldm_mean_all(ctx, ldm_sgm_loss(ctx, &lc, &den, x0, &cond, sg, n, NULL, NULL));
            float v = 0;
            if (!l || ldm_to_host(ctx, l, &v) || ldm_backward(ctx, l) || ldm_nn_optim_step(ctx, opt)) break;
            ldm_nn_optim_zero_grad(ctx, opt);
            if (it == 0) first = v;
            last = v;
            ldm_arena_rewind(ctx, m);
        }
        lt_report(!ctx->status && last < 0.9f * first, "vdit + EDM loss: 8 AdamW steps lower the loss", "%g -> %g %s", (double)first, (double)last, ldm_ctx_error(ctx));
        printf("     EDM loss %g -> %g\n", (double)first, (double)last);
        ldm_arena_rewind(ctx, keep);
        ldm_nn_optim_destroy(opt);
        ldm_sgm_denoiser_free(&den);
    }
out:
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_vdit_destroy(a); ldm_vdit_destroy(b); ldm_vdit_destroy(c);
}

static void test_config(ldm_ctx *ctx) {
    ldm_vdit_config d = ldm_vdit_config_default();
    LT_CHECK(d.patch_t == 1 && d.patch_size == 2 && d.hidden_size == 384 && d.depth == 12 && d.num_heads == 6 && d.mlp_ratio == 4.0f &&
             !d.learn_sigma && !d.switch_adaln_layer && d.num_frames == 0, "vdit config defaults come from the key table");
    ldm_config *cf = NULL;
    ldm_vdit_config r;
    const char *yaml = "network_config:\n  target: ldm.VideoDiT\n  params:\n    num_frames: 4\n    height: 4\n    width: 6\n    patch_t: 2\n"
                       "    in_channels: 8\n    out_channels: 4\n    hidden_size: 32\n    depth: 2\n    num_heads: 2\n    switch_adaln_layer: true\n";
    int ok = ldm_config_create(&cf) == LDM_OK && ldm_config_load_string(cf, yaml, "vdit.yaml", LDM_CONFIG_FORMAT_AUTO) == LDM_OK &&
             ldm_vdit_config_read(cf, ldm_config_find(ldm_config_root(cf), "network_config"), &r) == LDM_OK;
    ldm_vdit_config want = tiny(1, 0);
    lt_report(ok && memcmp(&r, &want, sizeof r) == 0, "vdit config read from YAML (target + params)", "%s", cf ? ldm_config_error(cf) : "no config");
    ldm_config_destroy(cf);
    cf = NULL;
    const char *sgm = "model:\n  target: sgm.models.diffusion.DiffusionEngine\n  params:\n    network_config:\n      target: ldm.VideoDiT\n"
                      "      params: {num_frames: 4, height: 4, width: 6, patch_t: 2, in_channels: 8, out_channels: 4, hidden_size: 32, "
                      "depth: 2, num_heads: 2, switch_adaln_layer: true}\n";
    memset(&r, 0, sizeof r);
    ok = ldm_config_create(&cf) == LDM_OK && ldm_config_load_string(cf, sgm, "sgm.yaml", LDM_CONFIG_FORMAT_AUTO) == LDM_OK &&
         ldm_vdit_config_read(cf, NULL, &r) == LDM_OK;
    lt_report(ok && memcmp(&r, &want, sizeof r) == 0, "vdit config read from an sgm model config (model.params.network_config)", "%s", cf ? ldm_config_error(cf) : "no config");
    ldm_config_destroy(cf);
    cf = NULL;
    ok = ldm_config_create(&cf) == LDM_OK && ldm_config_load_string(cf, "num_frames: 4\nheight: 4\nwidth: 6\nin_channels: 8\nout_channels: 4\nhiden_size: 32\n",
                                                                     "bad.yaml", LDM_CONFIG_FORMAT_AUTO) == LDM_OK;
    LT_CHECK(ok && ldm_vdit_config_read(cf, NULL, &r) != LDM_OK && strstr(ldm_config_error(cf), "hiden_size") && strstr(ldm_config_error(cf), "bad.yaml"),
             "vdit config: an unknown key is an error with file:line");
    ldm_config_destroy(cf);
    ldm_vdit_config b = tiny(0, 0);
    int64_t n;
    b.hidden_size = 40;
    LT_CHECK(ldm_vdit_count_params(ctx, &b, &n) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "multiple of 16"), "vdit: hidden_size not a multiple of 16 is an error");
    ldm_ctx_clear_error(ctx);
    b = tiny(0, 0);
    b.num_frames = 5;
    LT_CHECK(ldm_vdit_count_params(ctx, &b, &n) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "patch_t"), "vdit: frames not divisible by patch_t is an error");
    ldm_ctx_clear_error(ctx);
    /* adaLN-single trades depth Linear(D, 6D) + Linear(D, 2D) for one Linear(D, 6D) and the tables */
    int64_t n0 = 0, n1 = 0;
    ldm_vdit_config c0 = tiny(0, 0), c1 = tiny(1, 0);
    ldm_vdit_count_params(ctx, &c0, &n0);
    ldm_vdit_count_params(ctx, &c1, &n1);
    int64_t D = 32, per_block = 6 * D * D + 6 * D, fin = 2 * D * D + 2 * D;
    lt_report(n0 - n1 == 2 * per_block + fin - (6 * D * D + 6 * D) - 2 * 6 * D - 2 * D, "vdit: adaLN-single parameter count",
              "%lld vs %lld", (long long)n0, (long long)n1);
}

/* Every check; the config table's (host only) on the CPU alone. */
static void run_all(ldm_ctx *ctx, int cpu) {
    test_block(ctx, "dit", 0);
    test_block(ctx, "single", 1);
    test_model(ctx, "dit", 0, 1);
    test_model(ctx, "single", 1, 0);
    test_lora(ctx);
    test_sgm(ctx);
    test_save_train(ctx);
    if (cpu) test_config(ctx);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 1;
    return lt_main(&s, "test_vdit", run_all);
}
