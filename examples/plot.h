/* plot.h - line plots as RGB pixels for the ldm driver's loss curve (examples/main.c): axes,
   grid, ticks with numbers, a legend, text in a 5x7 pixel font. No dependencies.

       ex_plot_series s[2] = {{"train/rec_loss", xs, ys, n, 0}, {"val/rec_loss", vx, vy, vn, 1}};
       unsigned char *rgb = ex_plot_lines(960, 600, "step", "rec_loss", 2, s);  // free() it; NULL: no point
*/
#ifndef EX_PLOT_H
#define EX_PLOT_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef struct ex_plot_series {
    const char *label;
    const double *x, *y;          /* n points; non-finite y are skipped */
    int64_t n;
    int markers;                  /* also a square at each point */
} ex_plot_series;

typedef struct ex_glyph { char c; const char *rows[7]; } ex_glyph;
static const ex_glyph ex_font[] = {
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {'-', {".....", ".....", ".....", ".###.", ".....", ".....", "....."}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'a', {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"}},
    {'c', {".....", ".....", ".###.", "#....", "#....", "#...#", ".###."}},
    {'e', {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."}},
    {'i', {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."}},
    {'l', {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'n', {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'o', {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."}},
    {'p', {".....", ".....", "####.", "#...#", "####.", "#....", "#...."}},
    {'r', {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."}},
    {'s', {".....", ".....", ".####", "#....", ".###.", "....#", "####."}},
    {'t', {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."}},
    {'v', {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
};

typedef struct ex_canvas { int w, h; unsigned char *px; } ex_canvas;
static void ex_px(ex_canvas *c, int x, int y, const unsigned char *rgb) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    memcpy(c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3, rgb, 3);
}
static void ex_line(ex_canvas *c, int x0, int y0, int x1, int y1, const unsigned char *rgb, int thick) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
    for (;;) {
        for (int a = 0; a < thick; a++)
            for (int b = 0; b < thick; b++) ex_px(c, x0 + a - thick / 2, y0 + b - thick / 2, rgb);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}
static int ex_text(ex_canvas *c, int x, int y, const char *s, const unsigned char *rgb, int scale) {
    for (; *s; s++, x += 6 * scale) {
        const ex_glyph *g = NULL;
        for (size_t i = 0; i < sizeof ex_font / sizeof ex_font[0]; i++) if (ex_font[i].c == *s) g = &ex_font[i];
        if (!g) continue;
        for (int r = 0; r < 7; r++)
            for (int q = 0; q < 5; q++)
                if (g->rows[r][q] == '#')
                    for (int a = 0; a < scale; a++)
                        for (int b = 0; b < scale; b++) ex_px(c, x + q * scale + a, y + r * scale + b, rgb);
    }
    return x;
}
static int ex_text_width(const char *s, int scale) { return (int)strlen(s) * 6 * scale; }
static double ex_nice_step(double range, int n) {
    double raw = range / n, p = pow(10.0, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

/* W x H RGB pixels (malloc'ed) of up to 2 series against x from 0; NULL when no y is finite
   (or out of memory). */
static unsigned char *ex_plot_lines(int W, int H, const char *xlabel, const char *ylabel, int ns, const ex_plot_series *s) {
    double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
    int64_t npts = 0;
    if (ns > 2) ns = 2;
    for (int k = 0; k < ns; k++)
        for (int64_t i = 0; i < s[k].n; i++) {
            double y = s[k].y[i];
            if (!isfinite(y)) continue;
            npts++;
            if (s[k].x[i] > xmax) xmax = s[k].x[i];
            if (y < ymin) ymin = y;
            if (y > ymax) ymax = y;
        }
    if (!npts) return NULL;
    if (ymax - ymin < 1e-12) { ymax += 0.5 * fabs(ymax) + 1e-3; ymin -= 0.5 * fabs(ymin) + 1e-3; }
    double ystep = ex_nice_step(ymax - ymin, 5), xstep = ex_nice_step(xmax, 6);
    ymin = floor(ymin / ystep) * ystep;
    ymax = ceil(ymax / ystep) * ystep;
    xmax = ceil(xmax / xstep) * xstep;
    const int S = 2, L = 130, R = 30, T = 60, B = 70;
    ex_canvas c = {W, H, (unsigned char *)malloc((size_t)W * H * 3)};
    if (!c.px) return NULL;
    memset(c.px, 255, (size_t)W * H * 3);
    static const unsigned char black[3] = {0, 0, 0}, grid[3] = {225, 225, 225};
    static const unsigned char colors[2][3] = {{31, 119, 180}, {230, 110, 10}};
    int pw = W - L - R, ph = H - T - B;
#define EX_X(v) (L + (int)lround((v) / xmax * pw))
#define EX_Y(v) (T + ph - (int)lround(((v) - ymin) / (ymax - ymin) * ph))
    char lab[32];
    for (double y = ymin; y <= ymax + 0.5 * ystep; y += ystep) {
        int py = EX_Y(y);
        ex_line(&c, L, py, L + pw, py, grid, 1);
        ex_line(&c, L - 6, py, L, py, black, 1);
        snprintf(lab, sizeof lab, "%.4g", fabs(y) < 1e-9 * ystep ? 0.0 : y);
        ex_text(&c, L - 10 - ex_text_width(lab, S), py - 7, lab, black, S);
    }
    for (double x = 0; x <= xmax + 0.5 * xstep; x += xstep) {
        int px = EX_X(x);
        ex_line(&c, px, T, px, T + ph, grid, 1);
        ex_line(&c, px, T + ph, px, T + ph + 6, black, 1);
        snprintf(lab, sizeof lab, "%.6g", x);
        ex_text(&c, px - ex_text_width(lab, S) / 2, T + ph + 12, lab, black, S);
    }
    ex_line(&c, L, T, L, T + ph, black, 2);
    ex_line(&c, L, T + ph, L + pw, T + ph, black, 2);
    ex_text(&c, L + pw / 2 - ex_text_width(xlabel, S) / 2, H - 28, xlabel, black, S);
    ex_text(&c, L, 20, ylabel, black, S);
    for (int k = 0; k < ns; k++) {
        const unsigned char *col = colors[k];
        int have = 0, lx = 0, ly = 0;
        for (int64_t i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].y[i])) continue;
            int x = EX_X(s[k].x[i]), y = EX_Y(s[k].y[i]);
            if (have) ex_line(&c, lx, ly, x, y, col, 2);
            if (s[k].markers) for (int a = -3; a <= 3; a++) ex_line(&c, x - 3, y + a, x + 3, y + a, col, 1);
            lx = x; ly = y; have = 1;
        }
        int lx0 = L + pw - 330, ly0 = T + 12 + 30 * k;
        ex_line(&c, lx0, ly0 + 7, lx0 + 40, ly0 + 7, col, 3);
        ex_text(&c, lx0 + 50, ly0, s[k].label, black, S);
    }
#undef EX_X
#undef EX_Y
    return c.px;
}

#endif /* EX_PLOT_H */
