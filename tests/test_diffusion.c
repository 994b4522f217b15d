/* test_diffusion.c - ldm_diffusion.h sections 1 and 3 against PyTorch references of CompVis
   latent-diffusion (tests/ref/diffusion_ref.py): the four beta schedules and every derived
   buffer, the diffusion process ops, p_mean_variance / p_sample for eps, x0 and v, DDIM's
   schedule and update (eta 0 and 1), guided DDIM and DDPM runs of a toy denoiser with the
   noise fed from the fixture, the training loss (eps / x0 / v, l2 / l1, learned logvar, vlb)
   and its gradients, LitEma; then a tiny pixel-space DDPM trained on a mixture of four
   Gaussians and sampled with DDPM and DDIM (with EMA weights), checked statistically. */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "../ldm_diffusion.h"

#define FIX "../tests/fixtures/"

static ldm_ctx *ctx;
static ldm_weights *W;
#define LT_MAX_HOLD 512
static float *held[LT_MAX_HOLD];
static int nheld;

/* a fixture tensor as host floats, freed at exit */
static float *F(const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    float *p = lt_load(ctx, W, name, NULL);
    if (!p) { printf("FAIL fixture tensor %s missing (run tests/ref/diffusion_ref.py)\n", name); exit(1); }
    if (nheld < LT_MAX_HOLD) held[nheld++] = p;
    return p;
}
static ldm_tensor *FT(const char *name) {
    ldm_tensor *t = lt_tensor(ctx, W, name);
    if (!t) { printf("FAIL fixture tensor %s missing\n", name); exit(1); }
    return t;
}
static int check_ok(const char *name) {
    int ok = ldm_ctx_status(ctx) == LDM_OK;
    lt_report(ok, name, "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    return ok;
}
static void close_t(const char *name, ldm_tensor *got, const float *want, double atol, double rtol) {
    if (!got) { lt_report(0, name, "NULL result: %s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    lt_close(name, lt_h(ctx, got, 0), want, (long)got->numel, atol, rtol);
}

/* ---- schedules --------------------------------------------------------------------------- */
static const char *const KINDS[4] = {"linear", "sqrt_linear", "sqrt", "cosine"};
static const char *const BUFS[13] = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights"};
static float *buf_of(ldm_schedule *s, int k) {
    float *b[13];
    b[0] = s->betas; b[1] = s->alphas_cumprod; b[2] = s->alphas_cumprod_prev; b[3] = s->sqrt_alphas_cumprod;
    b[4] = s->sqrt_one_minus_alphas_cumprod; b[5] = s->log_one_minus_alphas_cumprod; b[6] = s->sqrt_recip_alphas_cumprod;
    b[7] = s->sqrt_recipm1_alphas_cumprod; b[8] = s->posterior_variance; b[9] = s->posterior_log_variance_clipped;
    b[10] = s->posterior_mean_coef1; b[11] = s->posterior_mean_coef2; b[12] = s->lvlb_weights;
    return b[k];
}
static void test_schedules(void) {
    char name[128];
    for (int k = 0; k < 4; k++) {
        ldm_schedule s;
        ldm_schedule_config c;
        memset(&c, 0, sizeof c);
        if (ldm_beta_schedule_parse(ctx, KINDS[k], &c.schedule) || ldm_schedule_init(ctx, &s, &c)) { check_ok(KINDS[k]); continue; }
        for (int b = 0; b < 13; b++) {
            snprintf(name, sizeof name, "schedule %s %s", KINDS[k], BUFS[b]);
            lt_close(name, buf_of(&s, b), F("sched.%s.%s", KINDS[k], BUFS[b]), 1000, 1e-6, 1e-6);
        }
        ldm_schedule_free(&s);
    }
    ldm_schedule s, g;
    ldm_schedule_config c;
    memset(&c, 0, sizeof c);
    c.parameterization = LDM_PRED_X0;
    ldm_schedule_init(ctx, &s, &c);
    if (check_ok("schedule linear x0")) lt_close("schedule linear lvlb_weights x0", s.lvlb_weights, F("sched.linear.lvlb_x0"), 1000, 1e-6, 1e-6);
    ldm_schedule_free(&s);
    c.parameterization = LDM_PRED_V;
    ldm_schedule_init(ctx, &s, &c);
    int ones = 1;
    for (int i = 0; i < 1000; i++) ones &= s.lvlb_weights[i] == 1.0f;
    LT_CHECK(ones, "schedule lvlb_weights v are 1");
    ldm_schedule_free(&s);
    memset(&c, 0, sizeof c);
    c.schedule = LDM_BETA_COSINE; c.timesteps = 100; c.v_posterior = 0.2; c.cosine_s = 0.02;
    ldm_schedule_init(ctx, &s, &c);
    if (check_ok("schedule cosine T 100")) {
        lt_close("schedule cosine T 100 v_posterior 0.2 posterior_variance", s.posterior_variance, F("sched.cosine100.posterior_variance"), 100, 1e-6, 1e-6);
        lt_close("schedule cosine T 100 v_posterior 0.2 log variance", s.posterior_log_variance_clipped, F("sched.cosine100.posterior_log_variance_clipped"), 100, 1e-6, 1e-6);
    }
    ldm_schedule_free(&s);
    memset(&c, 0, sizeof c);
    c.schedule = LDM_BETA_SQRT_LINEAR; c.timesteps = 50; c.linear_start = 1e-3; c.linear_end = 0.05;
    ldm_schedule_init(ctx, &s, &c);
    if (check_ok("schedule sqrt_linear T 50")) lt_close("schedule sqrt_linear T 50 1e-3..0.05 alphas_cumprod", s.alphas_cumprod, F("sched.sqrt_linear50.alphas_cumprod"), 50, 1e-6, 1e-6);
    ldm_schedule_free(&s);
    /* given_betas replaces the named schedule */
    double betas[1000];
    memset(&c, 0, sizeof c);
    ldm_make_beta_schedule(ctx, LDM_BETA_COSINE, 1000, 1e-4, 2e-2, 8e-3, betas);
    c.given_betas = betas;
    ldm_schedule_init(ctx, &g, &c);
    memset(&c, 0, sizeof c);
    c.schedule = LDM_BETA_COSINE;
    ldm_schedule_init(ctx, &s, &c);
    if (check_ok("schedule given_betas"))
        LT_CHECK(memcmp(g.posterior_mean_coef2, s.posterior_mean_coef2, 1000 * sizeof(float)) == 0, "schedule given_betas equals the named schedule");
    ldm_schedule_free(&s);
    ldm_schedule_free(&g);
    ldm_beta_schedule bs;
    ldm_parameterization pz;
    ldm_loss_type lt;
    LT_CHECK(ldm_beta_schedule_parse(ctx, "quadratic", &bs) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "hint"), "schedule: unknown name is an error with a hint");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(!ldm_parameterization_parse(ctx, "v", &pz) && pz == LDM_PRED_V && !ldm_loss_type_parse(ctx, "l1", &lt) && lt == LDM_LOSS_L1, "parse v, l1");
}

/* ---- the diffusion process ---------------------------------------------------------------- */
static void init_sched(ldm_schedule *s, ldm_beta_schedule k, int T, ldm_parameterization p) {
    ldm_schedule_config c;
    memset(&c, 0, sizeof c);
    c.schedule = k; c.timesteps = T; c.parameterization = p;
    ldm_schedule_init(ctx, s, &c);
}
static ldm_tensor *fixed_forward(ldm_ctx *c, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    (void)c; (void)x; (void)t; (void)cond;
    return (ldm_tensor *)self;
}
static void test_process(void) {
    static const char *const PN[3] = {"eps", "x0", "v"};
    ldm_schedule s[3];
    for (int p = 0; p < 3; p++) init_sched(&s[p], LDM_BETA_LINEAR, 100, (ldm_parameterization)p);
    ldm_tensor *x0 = FT("proc.x0"), *xt = FT("proc.xt"), *nz = FT("proc.noise"), *mo = FT("proc.model_out");
    int t[3] = {0, 37, 99};
    char name[128];
    close_t("q_sample", ldm_diffusion_q_sample(ctx, &s[0], x0, t, nz), F("proc.q_sample"), 1e-6, 1e-6);
    close_t("predict_start_from_noise", ldm_diffusion_predict_start_from_noise(ctx, &s[0], xt, t, nz), F("proc.start_from_noise"), 1e-6, 1e-6);
    close_t("predict_start_from_z_and_v", ldm_diffusion_predict_start_from_v(ctx, &s[0], xt, t, nz), F("proc.start_from_v"), 1e-6, 1e-6);
    close_t("predict_eps_from_z_and_v", ldm_diffusion_predict_eps_from_v(ctx, &s[0], xt, t, nz), F("proc.eps_from_v"), 1e-6, 1e-6);
    close_t("get_v", ldm_diffusion_get_v(ctx, &s[0], x0, t, nz), F("proc.get_v"), 1e-6, 1e-6);
    ldm_tensor *m = NULL, *v = NULL, *lv = NULL;
    ldm_diffusion_q_posterior(ctx, &s[0], x0, xt, t, &m, &v, &lv);
    close_t("q_posterior mean", m, F("proc.post_mean"), 1e-6, 1e-6);
    close_t("q_posterior variance", v, F("proc.post_var"), 0, 1e-6);
    close_t("q_posterior log variance (clipped at t 0)", lv, F("proc.post_logvar"), 0, 1e-6);
    for (int p = 0; p < 3; p++)
        for (int clip = 0; clip < 2; clip++) {
            ldm_tensor *x0h = NULL;
            m = NULL;
            ldm_diffusion_p_mean_variance(ctx, &s[p], mo, xt, t, clip, &m, NULL, NULL, &x0h);
            snprintf(name, sizeof name, "p_mean_variance %s clip %d mean", PN[p], clip);
            close_t(name, m, F("proc.pmv.%s.%d.mean", PN[p], clip), 1e-6, 1e-6);
            snprintf(name, sizeof name, "p_mean_variance %s clip %d x0_hat", PN[p], clip);
            close_t(name, x0h, F("proc.pmv.%s.%d.x0", PN[p], clip), 1e-6, 1e-6);
            /* one DDPM step (ldm_ddpm_step) of a denoiser that returns model_out */
            ldm_denoiser fixed;
            ldm_sample_opts o;
            memset(&o, 0, sizeof o);
            o.clip_denoised = clip;
            fixed.forward = fixed_forward; fixed.self = mo;
            ldm_tensor *xs = ldm_ddpm_step(ctx, &s[p], &fixed, xt, t, &o, nz, NULL);
            snprintf(name, sizeof name, "DDPM step (p_sample) %s clip %d", PN[p], clip);
            close_t(name, xs, F("proc.p_sample.%s.%d", PN[p], clip), 1e-5, 1e-5);
        }
    int bad[3] = {0, 100, 5};
    LT_CHECK(!ldm_diffusion_q_sample(ctx, &s[0], x0, bad, nz) && strstr(ldm_ctx_error(ctx), "outside [0, 100)"), "q_sample: timestep out of range is an error");
    ldm_ctx_clear_error(ctx);
    for (int p = 0; p < 3; p++) ldm_schedule_free(&s[p]);
    ldm_step_reset(ctx);
}

/* ---- the toy denoiser: tanh(x W^T + (t/T) b + E[y]) on x flattened -------------------------- */
typedef struct { ldm_tensor *W, *b, *E; int T; } toy;
static ldm_tensor *toy_forward(ldm_ctx *c, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    toy *m = (toy *)self;
    int64_t B = x->shape[0], idx[64];
    float y[64];
    if (!cond || !cond->y || B > 64 || ldm_to_host(c, cond->y, y)) return NULL;
    for (int64_t i = 0; i < B; i++) idx[i] = (int64_t)y[i];
    ldm_tensor *h = ldm_linear(c, ldm_reshape(c, x, ldm_shape2(B, 32)), m->W, NULL);
    h = ldm_add(c, h, ldm_mul(c, ldm_reshape(c, ldm_scale(c, t, (float)(1.0 / m->T)), ldm_shape2(B, 1)), m->b));
    h = ldm_add(c, h, ldm_embedding(c, m->E, B, idx));
    return ldm_reshape(c, ldm_tanh(c, h), ldm_shape_of(x));
}
typedef struct { int steps, logs; float last_x0[64]; long n; } run_log;
static void on_step(void *u, int i, int total) { (void)i; (void)total; ((run_log *)u)->steps++; }
static void on_log(void *u, int i, ldm_tensor *x, ldm_tensor *x0) {
    run_log *r = (run_log *)u;
    (void)i; (void)x;
    r->logs++;
    r->n = (long)x0->numel;
    if (x0->numel <= 64) ldm_to_host(ctx, x0, r->last_x0);
}

static void test_ddim(void) {
    ldm_schedule s;
    ldm_ddim d;
    init_sched(&s, LDM_BETA_LINEAR, 1000, LDM_PRED_EPS);
    float ts[64];
    ldm_ddim_init(ctx, &d, &s, 50, 0, 0.0);
    if (check_ok("ddim 50 uniform")) {
        for (int i = 0; i < d.S; i++) ts[i] = (float)d.timesteps[i];
        LT_CHECK(d.S == 50, "ddim 50 uniform: 50 steps");
        lt_close("ddim 50 timesteps (range(0, T, T/S) + 1)", ts, F("ddim50.timesteps"), 50, 0, 0);
        lt_close("ddim 50 alphas", d.alphas, F("ddim50.alphas"), 50, 0, 1e-7);
        lt_close("ddim 50 alphas_prev", d.alphas_prev, F("ddim50.alphas_prev"), 50, 0, 1e-7);
    }
    ldm_ddim_free(&d);
    ldm_ddim_init(ctx, &d, &s, 30, 0, 0.0);
    if (check_ok("ddim 30 uniform")) {
        for (int i = 0; i < d.S; i++) ts[i] = (float)d.timesteps[i];
        LT_CHECK(d.S == 31, "ddim 30 uniform over 1000: range(0, 1000, 33) gives 31 steps, as CompVis");
        lt_close("ddim 30 timesteps", ts, F("ddim30.timesteps"), 31, 0, 0);
    }
    ldm_ddim_free(&d);
    ldm_ddim_init(ctx, &d, &s, 7, 1, 0.0);
    if (check_ok("ddim 7 quad")) {
        for (int i = 0; i < d.S; i++) ts[i] = (float)d.timesteps[i];
        lt_close("ddim 7 quad timesteps", ts, F("ddim7q.timesteps"), 7, 0, 0);
    }
    ldm_ddim_free(&d);
    LT_CHECK(ldm_ddim_init(ctx, &d, &s, 1000, 0, 0.0) == LDM_ERR_INVALID, "ddim 1000 of 1000 steps reaches timestep 1000: an error");
    ldm_ctx_clear_error(ctx);
    ldm_tensor *xt = FT("proc.xt"), *nz = FT("proc.noise"), *mo = FT("proc.model_out");
    for (int eta = 0; eta < 2; eta++) {
        char name[128];
        ldm_ddim_init(ctx, &d, &s, 50, 0, (double)eta);
        snprintf(name, sizeof name, "ddim 50 eta %d sigmas", eta);
        lt_close(name, d.sigmas, F("ddim50.%d.sigmas", eta), 50, 1e-7, 1e-6);
        ldm_tensor *x0 = NULL, *x1 = ldm_ddim_update(ctx, &d, &s, mo, xt, 30, 0, nz, &x0);
        snprintf(name, sizeof name, "DDIM step eta %d", eta);
        close_t(name, x1, F("ddim50.%d.step30", eta), 1e-5, 1e-5);
        snprintf(name, sizeof name, "DDIM step eta %d pred_x0", eta);
        close_t(name, x0, F("ddim50.%d.step30_x0", eta), 1e-5, 1e-5);
        ldm_ddim_free(&d);
    }
    ldm_schedule_free(&s);
    ldm_step_reset(ctx);
}

static void test_runs(void) {
    toy m;
    ldm_denoiser den;
    m.W = FT("toy.W"); m.b = FT("toy.b"); m.E = FT("toy.E"); m.T = 1000;
    den.forward = toy_forward; den.self = &m;
    float yc[2] = {0, 2}, yu[2] = {3, 3};
    ldm_cond cond, unc;
    memset(&cond, 0, sizeof cond);
    memset(&unc, 0, sizeof unc);
    cond.y = ldm_from_host(ctx, ldm_shape1(2), yc);
    unc.y = ldm_from_host(ctx, ldm_shape1(2), yu);
    static const char *const PN[3] = {"eps", "x0", "v"};
    for (int p = 0; p < 3; p += 2) {
        ldm_schedule s;
        ldm_ddim d;
        ldm_sample_opts o;
        run_log rl;
        char name[128];
        init_sched(&s, LDM_BETA_LINEAR, 1000, (ldm_parameterization)p);
        ldm_ddim_init(ctx, &d, &s, 5, 0, 1.0);
        memset(&o, 0, sizeof o);
        memset(&rl, 0, sizeof rl);
        o.cond = &cond; o.uncond = &unc; o.guidance_scale = 3.0f;
        o.x_T = FT("run.xT"); o.noise = FT("run.noise5");
        o.on_step = on_step; o.on_log = on_log; o.user = &rl;
        ldm_mark mk = ldm_arena_mark(ctx);
        ldm_tensor *x = ldm_ddim_sample(ctx, &d, &s, &den, ldm_shape4(2, 2, 4, 4), &o);
        snprintf(name, sizeof name, "guided DDIM run, 5 steps, eta 1, scale 3, %s", PN[p]);
        close_t(name, x, F("run.ddim.%s", PN[p]), 1e-4, 1e-4);
        snprintf(name, sizeof name, "guided DDIM run %s: last pred_x0 (intermediates)", PN[p]);
        lt_close(name, rl.last_x0, F("run.ddim.%s.last_x0", PN[p]), 32 * 2, 1e-4, 1e-4);
        snprintf(name, sizeof name, "guided DDIM run %s: 5 step callbacks, 3 logs (start, index 4, index 0)", PN[p]);
        lt_report(rl.steps == 5 && rl.logs == 3, name, "steps %d logs %d", rl.steps, rl.logs);
        ldm_arena_rewind(ctx, mk);
        ldm_ddim_free(&d);
        ldm_schedule_free(&s);
    }
    /* guided DDPM, T 20, clip_denoised */
    {
        ldm_schedule s;
        ldm_sample_opts o;
        run_log rl;
        init_sched(&s, LDM_BETA_LINEAR, 20, LDM_PRED_EPS);
        m.T = 20;
        memset(&o, 0, sizeof o);
        memset(&rl, 0, sizeof rl);
        o.cond = &cond; o.uncond = &unc; o.guidance_scale = 2.0f; o.clip_denoised = 1; o.log_every_t = 5;
        o.x_T = FT("run.xT"); o.noise = FT("run.noise20");
        o.on_step = on_step; o.on_log = on_log; o.user = &rl;
        ldm_tensor *x = ldm_ddpm_sample(ctx, &s, &den, ldm_shape4(2, 2, 4, 4), &o);
        close_t("guided DDPM run, T 20, scale 2, clip_denoised", x, F("run.ddpm"), 1e-4, 1e-4);
        lt_report(rl.steps == 20 && rl.logs == 1 + 1 + 4, "guided DDPM run: 20 step callbacks, logs at start, t 19, 15, 10, 5, 0",
                  "steps %d logs %d", rl.steps, rl.logs);
        /* the same run with the noise from the ctx RNG is deterministic for a seed */
        float a[64], b[64];
        ldm_rng *r = ldm_ctx_rng(ctx);
        ldm_rng saved = *r;
        o.noise = NULL; o.x_T = NULL; o.on_log = NULL; o.on_step = NULL;
        ldm_tensor *x1 = ldm_ddpm_sample(ctx, &s, &den, ldm_shape4(2, 2, 4, 4), &o);
        if (x1) ldm_to_host(ctx, x1, a);
        *r = saved;
        ldm_tensor *x2 = ldm_ddpm_sample(ctx, &s, &den, ldm_shape4(2, 2, 4, 4), &o);
        if (x2) ldm_to_host(ctx, x2, b);
        LT_CHECK(x1 && x2 && memcmp(a, b, sizeof(float) * 64) == 0, "DDPM sampling from the ctx RNG is deterministic for a seed");
        /* temperature scales the step noise */
        {
            int t5[2] = {5, 5};
            ldm_tensor *xT = FT("run.xT"), *n0 = ldm_reshape(ctx, ldm_slice(ctx, FT("run.noise20"), 0, 0, 1), ldm_shape4(2, 2, 4, 4));
            ldm_sample_opts ot = o;
            ot.temperature = 0.5f;
            ldm_tensor *ya = ldm_ddpm_step(ctx, &s, &den, xT, t5, &ot, n0, NULL);
            ldm_tensor *yb = ldm_ddpm_step(ctx, &s, &den, xT, t5, &o, ldm_scale(ctx, n0, 0.5f), NULL);
            if (ya && yb) { ldm_to_host(ctx, ya, a); ldm_to_host(ctx, yb, b); }
            LT_CHECK(ya && yb && memcmp(a, b, sizeof(float) * 64) == 0, "DDPM step: temperature 0.5 equals half the noise");
        }
        /* inpainting: channel 0 kept from x0 (mask 1), channel 1 sampled */
        {
            float mk[64], x0h[64], got[64];
            for (int i = 0; i < 64; i++) mk[i] = (i / 16) % 2 == 0 ? 1.0f : 0.0f;
            memcpy(x0h, F("proc.x0"), sizeof x0h);
            ldm_sample_opts oi = o;
            oi.mask = ldm_from_host(ctx, ldm_shape4(2, 2, 4, 4), mk);
            oi.x0 = ldm_from_host(ctx, ldm_shape4(2, 2, 4, 4), x0h);
            ldm_tensor *xi = ldm_ddpm_sample(ctx, &s, &den, ldm_shape4(2, 2, 4, 4), &oi);
            double kept = 0, free_ = 0;
            if (xi && !ldm_to_host(ctx, xi, got))
                for (int i = 0; i < 64; i++) {
                    double d = fabs(got[i] - x0h[i]);
                    if (mk[i] != 0) { if (d > kept) kept = d; } else if (d > free_) free_ = d;
                }
            lt_report(xi && kept < 0.06 && free_ > 0.1, "DDPM inpainting: the masked channel ends at q_sample(x0, 0), the other is sampled",
                      "max |x - x0| kept %.4f, free %.4f", kept, free_);
            ldm_ddim d5;
            ldm_schedule s1000;
            init_sched(&s1000, LDM_BETA_LINEAR, 1000, LDM_PRED_EPS);
            ldm_ddim_init(ctx, &d5, &s1000, 5, 0, 0.0);
            m.T = 1000;
            oi.clip_denoised = 0;
            xi = ldm_ddim_sample(ctx, &d5, &s1000, &den, ldm_shape4(2, 2, 4, 4), &oi);
            kept = 0;
            if (xi && !ldm_to_host(ctx, xi, got))
                for (int i = 0; i < 64; i++) if (mk[i] != 0 && fabs(got[i] - x0h[i]) > kept) kept = fabs(got[i] - x0h[i]);
            lt_report(xi && kept < 0.1, "DDIM inpainting: the masked channel stays near x0", "max |x - x0| kept %.4f", kept);
            m.T = 20;
            ldm_ddim_free(&d5);
            ldm_schedule_free(&s1000);
        }
        ldm_schedule_free(&s);
    }
    ldm_step_reset(ctx);
}

/* ---- the training loss -------------------------------------------------------------------- */
/* n floats of device (or host) memory of the ctx device into out */
static void host(const float *p, int64_t n, float *out) {
    ldm_tensor w = ldm_tensor_wrap((float *)p, ldm_shape1(n), ldm_ctx_device(ctx));
    if (ldm_to_host(ctx, &w, out)) memset(out, 0xff, sizeof(float) * (size_t)n);
}
static void test_loss(void) {
    static const struct { const char *name; ldm_parameterization p; ldm_loss_type lt; int learn; double elbo; } V[4] = {
        {"eps_l2", LDM_PRED_EPS, LDM_LOSS_L2, 1, 0.5}, {"x0_l2", LDM_PRED_X0, LDM_LOSS_L2, 0, 0.0},
        {"v_l2", LDM_PRED_V, LDM_LOSS_L2, 1, 0.25}, {"eps_l1", LDM_PRED_EPS, LDM_LOSS_L1, 0, 1.0}};
    static const char *const NW[3] = {"W", "b", "E"};
    float *wv[3], *lv0 = F("loss.logvar");
    wv[0] = F("toy.W"); wv[1] = F("toy.b"); wv[2] = F("toy.E");
    int64_t shp[3][2] = {{32, 32}, {32, 1}, {4, 32}};
    int nd[3] = {2, 1, 2};
    float yv[4] = {0, 1, 2, 3};
    int t[4] = {3, 250, 600, 999};
    for (int k = 0; k < 4; k++) {
        ldm_schedule s;
        init_sched(&s, LDM_BETA_LINEAR, 1000, V[k].p);
        ldm_tensor *w[3], *lvw = ldm_from_host(ctx, ldm_shape1(1000), lv0); /* leaves on the ctx device */
        for (int i = 0; i < 3; i++) {
            w[i] = ldm_from_host(ctx, ldm_shape_n(nd[i], shp[i]), wv[i]);
            if (w[i]) w[i]->requires_grad = 1;
        }
        if (lvw) lvw->requires_grad = 1;
        toy m;
        ldm_denoiser den;
        m.W = w[0]; m.b = w[1]; m.E = w[2]; m.T = 1000;
        den.forward = toy_forward; den.self = &m;
        ldm_cond cond;
        memset(&cond, 0, sizeof cond);
        cond.y = ldm_from_host(ctx, ldm_shape1(4), yv);
        ldm_loss_config lc;
        memset(&lc, 0, sizeof lc);
        lc.loss_type = V[k].lt; lc.original_elbo_weight = V[k].elbo;
        ldm_loss_log log;
        ldm_tensor *loss = ldm_diffusion_p_losses(ctx, &s, &lc, &den, FT("loss.x0"), &cond, t, NULL, FT("loss.noise"),
                                                  V[k].learn ? lvw : NULL, &log);
        char name[128];
        snprintf(name, sizeof name, "p_losses %s", V[k].name);
        if (!loss || ldm_backward(ctx, loss)) { check_ok(name); ldm_schedule_free(&s); continue; }
        const float *want = F("loss.%s.values", V[k].name); /* loss_simple, loss_gamma, logvar, vlb, loss */
        float got[5], exp5[5];
        int n = V[k].learn ? 5 : 3, keys_ok = log.n == n;
        const char *const K5[5] = {"train/loss_simple", "train/loss_gamma", "logvar", "train/loss_vlb", "train/loss"};
        const char *const K3[3] = {"train/loss_simple", "train/loss_vlb", "train/loss"};
        for (int i = 0; i < n && keys_ok; i++) {
            keys_ok &= strcmp(log.item[i].key, V[k].learn ? K5[i] : K3[i]) == 0;
            got[i] = log.item[i].value;
            exp5[i] = V[k].learn ? want[i] : want[i == 0 ? 0 : i == 1 ? 3 : 4];
        }
        snprintf(name, sizeof name, "p_losses %s: logged keys (CompVis names and order)", V[k].name);
        lt_report(keys_ok, name, "n %d, first key %s", log.n, log.n ? log.item[0].key : "");
        snprintf(name, sizeof name, "p_losses %s: logged values", V[k].name);
        if (keys_ok) lt_close(name, got, exp5, n, 1e-6, 1e-5);
        snprintf(name, sizeof name, "p_losses %s: loss", V[k].name);
        lt_close(name, lt_h(ctx, loss, 0), want + 4, 1, 1e-6, 1e-5);
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "p_losses %s: d loss / d %s", V[k].name, NW[i]);
            lt_close(name, lt_h(ctx, w[i], 1), F("loss.%s.grad_%s", V[k].name, NW[i]), (long)w[i]->numel, 1e-6, 1e-3);
        }
        if (V[k].learn) {
            snprintf(name, sizeof name, "p_losses %s: d loss / d logvar", V[k].name);
            lt_close(name, lt_h(ctx, lvw, 1), F("loss.%s.grad_logvar", V[k].name), 1000, 1e-7, 1e-3);
        }
        ldm_step_reset(ctx);
        ldm_schedule_free(&s);
    }
    /* learn_logvar through a registry parameter: its gradient lands in the gradient block */
    {
        ldm_nn_params *P;
        ldm_schedule s;
        init_sched(&s, LDM_BETA_LINEAR, 1000, LDM_PRED_EPS);
        ldm_nn_params_create(ctx, &P, ldm_ctx_device(ctx));
        ldm_tensor *lvp = ldm_diffusion_logvar_param(P, 1000, 0.0f);
        ldm_nn_params_alloc(ctx, P);
        toy m;
        ldm_denoiser den;
        m.W = ldm_from_host(ctx, ldm_shape2(32, 32), wv[0]); m.b = ldm_from_host(ctx, ldm_shape1(32), wv[1]);
        m.E = ldm_from_host(ctx, ldm_shape2(4, 32), wv[2]); m.T = 1000;
        den.forward = toy_forward; den.self = &m;
        ldm_cond cond;
        memset(&cond, 0, sizeof cond);
        cond.y = ldm_from_host(ctx, ldm_shape1(4), yv);
        ldm_loss_log log;
        ldm_tensor *loss = ldm_diffusion_p_losses(ctx, &s, NULL, &den, FT("loss.x0"), &cond, t, NULL, FT("loss.noise"), lvp, &log);
        float g[1000];
        int ok = loss && !ldm_backward(ctx, loss) && ldm_nn_find(P, "logvar") == lvp;
        if (ok) { host(lvp->grad, 1000, g); }
        /* d/d logvar_t of mean_b(ls_b e^-lv + lv) at lv = 0 is (1 - ls_b)/B at the sampled t only */
        int nz = 0;
        for (int i = 0; ok && i < 1000; i++) nz += g[i] != 0;
        lt_report(ok && nz == 4 && log.n == 5 && strcmp(log.item[2].key, "logvar") == 0 && log.item[2].value == 0.0f,
                  "learn_logvar: \"logvar\" parameter (logvar_init 0) gets gradients at the 4 sampled steps", "%s nz %d", ldm_ctx_error(ctx), nz);
        ldm_ctx_clear_error(ctx);
        ldm_nn_params_destroy(P);
        ldm_schedule_free(&s);
        ldm_step_reset(ctx);
    }
    /* sampled steps and noise come from the ctx RNG */
    ldm_schedule s;
    init_sched(&s, LDM_BETA_LINEAR, 1000, LDM_PRED_EPS);
    toy m;
    ldm_denoiser den;
    m.W = ldm_from_host(ctx, ldm_shape2(32, 32), wv[0]); m.b = ldm_from_host(ctx, ldm_shape1(32), wv[1]);
    m.E = ldm_from_host(ctx, ldm_shape2(4, 32), wv[2]); m.T = 1000;
    den.forward = toy_forward; den.self = &m;
    ldm_cond cond;
    memset(&cond, 0, sizeof cond);
    cond.y = ldm_from_host(ctx, ldm_shape1(4), yv);
    int t1[4], t2[4];
    float l1 = NAN, l2 = NAN;
    ldm_rng saved = *ldm_ctx_rng(ctx);
    ldm_tensor *a = ldm_diffusion_p_losses(ctx, &s, NULL, &den, FT("loss.x0"), &cond, NULL, t1, NULL, NULL, NULL);
    if (a) ldm_to_host(ctx, a, &l1);
    *ldm_ctx_rng(ctx) = saved;
    ldm_tensor *b = ldm_diffusion_p_losses(ctx, &s, NULL, &den, FT("loss.x0"), &cond, NULL, t2, NULL, NULL, NULL);
    if (b) ldm_to_host(ctx, b, &l2);
    int in_range = 1;
    for (int i = 0; i < 4; i++) in_range &= t1[i] >= 0 && t1[i] < 1000;
    LT_CHECK(a && b && l1 == l2 && memcmp(t1, t2, sizeof t1) == 0 && in_range && l1 > 0,
             "p_losses: t and noise drawn from the ctx RNG, in [0, T), deterministic for a seed");
    ldm_schedule_free(&s);
    ldm_step_reset(ctx);
}

/* ---- EMA (LitEma) ------------------------------------------------------------------------- */
static void test_ema(void) {
    static const char *const N[3] = {"a", "b", "c"};
    for (int variant = 0; variant < 2; variant++) {
        ldm_nn_params *P;
        ldm_tensor *p[3];
        ldm_nn_params_create(ctx, &P, ldm_ctx_device(ctx));
        p[0] = ldm_nn_param(P, "a", ldm_shape2(3, 4), ldm_nn_init_const(0));
        p[1] = ldm_nn_param(P, "b", ldm_shape1(5), ldm_nn_init_const(0));
        p[2] = ldm_nn_param(P, "c", ldm_shape1(2), ldm_nn_init_const(0));
        ldm_nn_set_trainable(P, "c", 0);
        ldm_nn_params_alloc(ctx, P);
        float cur[3][12], sh[64], pa[12], pc[2];
        int64_t nblk = 0;
        for (int i = 0; i < 3; i++) {
            memcpy(cur[i], F("ema.init.%s", N[i]), sizeof(float) * (size_t)p[i]->numel);
            ldm_nn_copy_from_host(ctx, p[i], cur[i]);
        }
        ldm_ema ema;
        int updates = variant == 0 ? 12 : 3;
        ldm_ema_init(ctx, &ema, P, variant == 0 ? 0.0f : 0.9f, variant == 0);
        for (int u = 0; u < updates; u++) {
            for (int i = 0; i < 3; i++) {
                const float *d = F("ema.step%d.%s", u, N[i]);
                for (int64_t j = 0; j < p[i]->numel; j++) cur[i][j] += d[j];
                ldm_nn_copy_from_host(ctx, p[i], cur[i]);
            }
            ldm_ema_update(ctx, &ema);
        }
        const char *tag = variant == 0 ? "warm" : "plain";
        ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &nblk);
        if (nblk > 64) nblk = 64;
        host(ema.shadow, nblk, sh);
        char name[128];
        if (!check_ok(variant == 0 ? "ema: decay 0.9999 with warm-up, 12 updates" : "ema: decay 0.9 without warm-up, 3 updates")) { ldm_nn_params_destroy(P); continue; }
        for (int i = 0; i < 2; i++) {
            snprintf(name, sizeof name, "ema %s: shadow of %s equals LitEma's", tag, N[i]);
            lt_close(name, sh + ldm_nn_entry_at(P, i)->offset, F("ema.%s.%s", tag, N[i]), (long)p[i]->numel, 0, 1e-7);
        }
        snprintf(name, sizeof name, "ema %s: frozen c is not averaged", tag);
        LT_CHECK(memcmp(sh + ldm_nn_entry_at(P, 2)->offset, F("ema.init.c"), 2 * sizeof(float)) == 0, name);
        if (variant == 0) {
            ldm_ema_store(ctx, &ema);
            ldm_ema_copy_to(ctx, &ema);
            host(p[0]->data, 12, pa);
            host(p[2]->data, 2, pc);
            LT_CHECK(memcmp(pa, F("ema.warm.a"), sizeof pa) == 0 && memcmp(pc, cur[2], sizeof pc) == 0,
                     "ema copy_to: trainable parameters get the shadow, frozen ones stay");
            ldm_ema_restore(ctx, &ema);
            host(p[0]->data, 12, pa);
            LT_CHECK(memcmp(pa, cur[0], sizeof pa) == 0, "ema restore: the training weights are back");
            char nm[128];
            size_t len = ldm_ema_state_name("model.diffusion_model.out.2.weight", "model.", nm, sizeof nm);
            LT_CHECK(strcmp(nm, "model_ema.diffusion_modelout2weight") == 0 && len == strlen(nm), "ema state name: model_ema.diffusion_modelout2weight");
            ldm_ema_state_name("model.diffusion_model.out.2.weight", "model.", nm, 12);
            LT_CHECK(strcmp(nm, "model_ema.d") == 0, "ema state name: truncated to the buffer");
            /* save and load round trip */
            const char *path = "diffusion_ema_test.safetensors";
            ldm_ema e2;
            ldm_ema_save(ctx, &ema, path, NULL);
            ldm_ema_init(ctx, &e2, P, 0.5f, 1);
            ldm_ema_load(ctx, &e2, path, NULL);
            float sh2[64];
            host(e2.shadow, nblk, sh2);
            if (check_ok("ema save + load"))
                LT_CHECK(memcmp(sh2, sh, sizeof(float) * 12) == 0 && memcmp(sh2 + ldm_nn_entry_at(P, 1)->offset, sh + ldm_nn_entry_at(P, 1)->offset, sizeof(float) * 5) == 0 && e2.num_updates == 12 && e2.decay == 0.9999f,
                         "ema save + load: shadow, decay and num_updates round trip");
            ldm_weights *w;
            if (!ldm_weights_open(ctx, &w, path)) {
                LT_CHECK(ldm_weights_find(w, "model_ema.a") >= 0 && ldm_weights_find(w, "model_ema.c") < 0 &&
                         ldm_weights_find(w, "model_ema.num_updates") >= 0, "ema save: LitEma's names, frozen parameters left out");
                ldm_weights_close(w);
            }
            remove(path);
            ldm_ema_free(ctx, &e2);
        }
        ldm_ema_free(ctx, &ema);
        ldm_nn_params_destroy(P);
    }
    /* a block longer than one 4M-float chunk */
    {
        const int64_t n = ((int64_t)1 << 22) + 300000;
        ldm_nn_params *P;
        ldm_nn_params_create(ctx, &P, ldm_ctx_device(ctx));
        ldm_tensor *big = ldm_nn_param(P, "big", ldm_shape1(n), ldm_nn_init_uniform(-1, 1));
        ldm_nn_params_alloc(ctx, P);
        float *p0 = (float *)malloc(sizeof(float) * (size_t)n), *sh = (float *)malloc(sizeof(float) * (size_t)n);
        float *got = (float *)malloc(sizeof(float) * (size_t)n);
        ldm_ema ema;
        int ok = p0 && sh && got && !ldm_ema_init(ctx, &ema, P, 0.0f, 1);
        if (ok) {
            host(big->data, n, p0);
            memcpy(sh, p0, sizeof(float) * (size_t)n);
            for (int64_t j = 0; j < n; j++) p0[j] = 0.5f * p0[j] + 0.25f;  /* an optimizer's step */
            ldm_nn_copy_from_host(ctx, big, p0);
            ldm_ema_update(ctx, &ema);                                     /* decay 2/11 */
            float omd = 1.0f - 2.0f / 11.0f;
            for (int64_t j = 0; j < n; j++) sh[j] -= omd * (sh[j] - p0[j]);
            host(ema.shadow, n, got);
            ok = memcmp(got, sh, sizeof(float) * (size_t)n) == 0;
            ldm_ema_free(ctx, &ema);
        }
        lt_report(ok, "ema: a 4.5M-float block (two chunks) updates every element", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        free(p0); free(sh); free(got);
        ldm_nn_params_destroy(P);
    }
    check_ok("ema: no error");
}

/* ---- end to end: a tiny pixel-space DDPM on a mixture of four Gaussians --------------------- */
typedef struct { ldm_nn_linear l1, l2, l3; } mlp;
#define E2E_EMB 16
static ldm_tensor *mlp_forward(ldm_ctx *c, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    mlp *m = (mlp *)self;
    int64_t B = x->shape[0];
    float *tv = (float *)malloc(sizeof(float) * (size_t)B * (1 + E2E_EMB)), *emb = tv + B;
    (void)cond;
    if (!tv || ldm_to_host(c, t, tv)) { free(tv); return NULL; }
    for (int64_t i = 0; i < B; i++) /* [cos, sin] sinusoidal timestep embedding */
        for (int j = 0; j < E2E_EMB / 2; j++) {
            double f = exp(-log(10000.0) * j / (E2E_EMB / 2)) * tv[i];
            emb[i * E2E_EMB + j] = (float)cos(f);
            emb[i * E2E_EMB + E2E_EMB / 2 + j] = (float)sin(f);
        }
    ldm_tensor *xs[2];
    xs[0] = x;
    xs[1] = ldm_from_host(c, ldm_shape2(B, E2E_EMB), emb);
    free(tv);
    ldm_tensor *h = ldm_silu(c, ldm_nn_linear_forward(c, &m->l1, ldm_concat(c, 2, xs, 1)));
    h = ldm_silu(c, ldm_nn_linear_forward(c, &m->l2, h));
    return ldm_nn_linear_forward(c, &m->l3, h);
}
static const float MODES[4][2] = {{-0.5f, -0.5f}, {-0.5f, 0.5f}, {0.5f, -0.5f}, {0.5f, 0.5f}};
#define E2E_STD 0.08f
static void check_modes(const char *tag, const float *x, int n, double min_near) {
    int cnt[4] = {0}, near = 0;
    double sum[4][2] = {{0}}, sq[4][2] = {{0}};
    for (int i = 0; i < n; i++) {
        int best = 0;
        double bd = 1e30;
        for (int k = 0; k < 4; k++) {
            double dx = x[2 * i] - MODES[k][0], dy = x[2 * i + 1] - MODES[k][1], dd = dx * dx + dy * dy;
            if (dd < bd) { bd = dd; best = k; }
        }
        if (fabs(x[2 * i] - MODES[best][0]) < 0.3 && fabs(x[2 * i + 1] - MODES[best][1]) < 0.3) {
            near++;
            cnt[best]++;
            for (int a = 0; a < 2; a++) { sum[best][a] += x[2 * i + a]; sq[best][a] += (double)x[2 * i + a] * x[2 * i + a]; }
        }
    }
    char name[160];
    snprintf(name, sizeof name, "e2e %s: >= %.0f%% of samples within 0.3 of a mode", tag, 100 * min_near);
    lt_report(near >= min_near * n, name, "%d of %d", near, n);
    printf("     %s: near %d/%d, shares", tag, near, n);
    int share_ok = 1, mean_ok = 1, std_ok = 1;
    double worst_mean = 0, smin = 1e9, smax = 0;
    for (int k = 0; k < 4; k++) {
        double share = (double)cnt[k] / n;
        printf(" %.3f", share);
        share_ok &= share >= 0.17 && share <= 0.33;
        for (int a = 0; a < 2 && cnt[k] > 1; a++) {
            double mu = sum[k][a] / cnt[k], sd = sqrt(sq[k][a] / cnt[k] - mu * mu);
            if (fabs(mu - MODES[k][a]) > worst_mean) worst_mean = fabs(mu - MODES[k][a]);
            if (sd < smin) smin = sd;
            if (sd > smax) smax = sd;
        }
        if (cnt[k] < 2) mean_ok = std_ok = 0;
    }
    printf("; worst mean offset %.4f; per-mode std in [%.4f, %.4f] (data %.3f)\n", worst_mean, smin, smax, (double)E2E_STD);
    mean_ok &= worst_mean < 0.05;
    std_ok &= smin > 0.5 * E2E_STD && smax < 1.6 * E2E_STD;
    snprintf(name, sizeof name, "e2e %s: every mode holds 17..33%% of the samples (data: 25%%)", tag);
    lt_report(share_ok, name, "see the shares above");
    snprintf(name, sizeof name, "e2e %s: per-mode means within 0.05 of the centres", tag);
    lt_report(mean_ok, name, "worst %.4f", worst_mean);
    snprintf(name, sizeof name, "e2e %s: per-mode std within [0.5, 1.6] x the data's", tag);
    lt_report(std_ok, name, "[%.4f, %.4f]", smin, smax);
}
static void test_e2e(void) {
    ldm_nn_params *P;
    mlp m;
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    ldm_nn_linear_init(P, &m.l1, "l1", 2 + E2E_EMB, 64, 1);
    ldm_nn_linear_init(P, &m.l2, "l2", 64, 64, 1);
    ldm_nn_linear_init(P, &m.l3, "l3", 64, 2, 1);
    if (ldm_nn_params_alloc(ctx, P)) { check_ok("e2e model"); return; }
    ldm_denoiser den;
    den.forward = mlp_forward; den.self = &m;
    ldm_schedule s;
    ldm_schedule_config sc;
    memset(&sc, 0, sizeof sc);
    sc.schedule = LDM_BETA_SQRT_LINEAR; sc.timesteps = 100; sc.linear_start = 1e-3; sc.linear_end = 0.15;
    ldm_schedule_init(ctx, &s, &sc);
    ldm_nn_optim *opt;
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, 3e-3);
    ldm_nn_optim_create(ctx, &opt, P, &oc, 0, NULL);
    ldm_ema ema;
    ldm_ema_init(ctx, &ema, P, 0.995f, 1);
    enum { BATCH = 256, STEPS = 12000, NS = 2000 };
    static float data[BATCH * 2];
    float first = 0, last = 0;
    for (int it = 0; it < STEPS && !ldm_ctx_status(ctx); it++) {
        ldm_rng_normal(ctx, ldm_ctx_rng(ctx), LDM_CPU, data, BATCH * 2, 0.0f, E2E_STD);
        for (int i = 0; i < BATCH; i++) {
            int k = (int)(ldm_rng_u64(ldm_ctx_rng(ctx)) % 4);
            data[2 * i] += MODES[k][0];
            data[2 * i + 1] += MODES[k][1];
        }
        ldm_loss_log log;
        if (it >= STEPS / 2) ldm_nn_optim_set_lr(opt, 3e-3 * (1.0 - 0.9 * (it - STEPS / 2) / (STEPS / 2))); /* linear decay to 3e-4 */
        ldm_tensor *loss = ldm_diffusion_p_losses(ctx, &s, NULL, &den, ldm_from_host(ctx, ldm_shape2(BATCH, 2), data), NULL, NULL, NULL, NULL, NULL, &log);
        if (!loss || ldm_backward(ctx, loss)) break;
        ldm_nn_optim_step(ctx, opt);
        ldm_nn_optim_zero_grad(ctx, opt);
        ldm_ema_update(ctx, &ema);
        if (it < 100) first += log.item[0].value / 100;
        if (it >= STEPS - 100) last += log.item[0].value / 100;
        ldm_step_reset(ctx);
    }
    if (!check_ok("e2e training")) { ldm_nn_params_destroy(P); return; }
    printf("     e2e: loss_simple %.4f (first 100 steps) -> %.4f (last 100)\n", first, last);
    LT_CHECK(last < 0.8f * first, "e2e: the training loss fell");
    static float xs[NS * 2];
    ldm_sample_opts o;
    memset(&o, 0, sizeof o);
    o.clip_denoised = 1; /* the data lie in [-1, 1] (DDPM's default) */
    ldm_tensor *x = ldm_ddpm_sample(ctx, &s, &den, ldm_shape2(NS, 2), &o);
    if (x && !ldm_to_host(ctx, x, xs)) check_modes("DDPM, 100 steps", xs, NS, 0.9);
    else check_ok("e2e DDPM sampling");
    ldm_step_reset(ctx);
    ldm_ddim d;
    ldm_ddim_init(ctx, &d, &s, 50, 0, 0.0);
    ldm_ema_store(ctx, &ema);
    ldm_ema_copy_to(ctx, &ema);
    memset(&o, 0, sizeof o);
    x = ldm_ddim_sample(ctx, &d, &s, &den, ldm_shape2(NS, 2), &o);
    if (x && !ldm_to_host(ctx, x, xs)) check_modes("DDIM, 50 steps, eta 0, EMA weights", xs, NS, 0.85);
    else check_ok("e2e DDIM sampling");
    ldm_ema_restore(ctx, &ema);
    ldm_step_reset(ctx);
    ldm_ddim_free(&d);
    ldm_ema_free(ctx, &ema);
    ldm_nn_optim_destroy(opt);
    ldm_schedule_free(&s);
    ldm_nn_params_destroy(P);
}

int main(int argc, char **argv) {
    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.seed = 1234;
    st.arena_bytes = (size_t)256 << 20;
    if (ldm_ctx_create(&ctx, &st)) { printf("FAIL cannot create a context\n"); return 1; }
    if (ldm_weights_open(ctx, &W, FIX "diffusion_ref.safetensors")) { printf("FAIL %s\n", ldm_ctx_error(ctx)); return 1; }
    int e2e = !(argc > 1 && strcmp(argv[1], "--no-e2e") == 0);
#ifndef LDM_CUDA_EMULATOR /* the emulator build only runs the device part below */
    test_schedules();
    test_process();
    test_ddim();
    test_runs();
    test_loss();
    test_ema();
    if (e2e) test_e2e();
#else
    (void)e2e;
#endif
#ifdef LDM_CUDA
    /* the same checks on the GPU (the emulator build runs the CUDA code on the CPU) */
    ldm_ctx *cpu = ctx;
    if (lt_cuda_begin(&ctx, &st, "test_diffusion")) {
        test_process();
        test_ddim();
        test_runs();
        test_loss();
        test_ema();
        lt_cuda_end(ctx);
    }
    ctx = cpu;
#endif
    ldm_weights_close(W);
    while (nheld) free(held[--nheld]);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_diffusion");
}
