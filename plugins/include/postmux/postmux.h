/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * postmux.h - the one header a Postmux transport plugin includes.
 */
#pragma once

#define __PMX_H_INSIDE__

#include <postmux/postmux-version.h>
#include <postmux/postmux-result.h>
#include <postmux/postmux-secret.h>
#include <postmux/postmux-transport.h>
#include <postmux/postmux-smtp.h>
#include <postmux/postmux-oauth2.h>
#include <postmux/postmux-http.h>

#undef __PMX_H_INSIDE__
