/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux-version.h - the plugin ABI version and the symbol export macro.
 *
 * The host accepts a transport whose descriptor carries the same ABI major
 * as PMX_ABI_MAJOR and a minor that is not higher than PMX_ABI_MINOR.
 * Until the 1.0 freeze the ABI may change between minor versions.
 */
#pragma once

#if !defined(__PMX_H_INSIDE__) && !defined(PMX_COMPILATION)
#error "Only <postmux/postmux.h> can be included directly."
#endif

#define PMX_ABI_MAJOR 1
#define PMX_ABI_MINOR 0

#if defined(_WIN32)
#define PMX_EXPORT __declspec(dllexport)
#else
#define PMX_EXPORT __attribute__((visibility("default")))
#endif
