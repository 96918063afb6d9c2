// Signs requests with Huawei Cloud's own Node.js SDK signer
// (@huaweicloud/huaweicloud-sdk-core: DerivedAKSKSigner, AKSKSigner), so the
// console's signatures are judged by an independent implementation.
// Reads JSON lines on stdin, one request each:
//   {"method","path","query","headers":[[name,value],...],"body","date",
//    "ak","sk","region","signing":"derived"|"basic"}
// and prints, one line each, the Authorization header the SDK computes.
// Usage: node tests/unit/huawei-sign.js NODE_MODULES_DIR < requests.jsonl
// (tests/unit/signing.test.sh installs the package and compares.)
'use strict';
const path = require('path');
const readline = require('readline');
const core = path.join(process.argv[2], '@huaweicloud/huaweicloud-sdk-core');
const { DerivedAKSKSigner } = require(path.join(core, 'auth/DerivedAKSKSigner'));
const { AKSKSigner } = require(path.join(core, 'auth/AKSKSigner'));
const { BasicCredentials } = require(path.join(core, 'auth/BasicCredentials'));

function queryParams(query) {	// "a=1&b=2&a=3" as the SDK takes it: {a: ['1', '3'], b: '2'}
	const out = {};
	for (const pair of (query || '').split('&').filter(Boolean)) {
		const eq = pair.indexOf('=');
		const k = eq < 0 ? pair : pair.slice(0, eq), v = eq < 0 ? '' : pair.slice(eq + 1);
		out[k] = k in out ? [].concat(out[k], v) : v;
	}
	return out;
}

function sign(r) {	// the SDK's Authorization header for one request
	const headers = {};
	for (const [name, value] of r.headers)
		headers[name === 'x-sdk-date' ? 'X-Sdk-Date' : name] = value;
	const host = headers.host;
	const request = {
		method: r.method, endpoint: 'https://' + host + r.path,
		queryParams: queryParams(r.query), headers,
	};
	if (r.body)
		request.data = JSON.parse(r.body);	// the SDK hashes JSON.stringify(data)
	const cred = new BasicCredentials().withAk(r.ak).withSk(r.sk);
	cred.processDerivedAuthParams('iotdm', r.region);
	const signer = r.signing === 'basic' ? AKSKSigner : DerivedAKSKSigner;
	return signer.sign(request, cred).Authorization;
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
	if (line.trim())
		console.log(sign(JSON.parse(line)));
});
